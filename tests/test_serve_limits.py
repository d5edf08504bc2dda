"""The server's bounds (issue 14): tokens, max_k with ties, decode memory per request and across requests, and
echoed values. Each case of the issue has a test here."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medhash.cli import main
from medhash.errors import InvalidParameterError
from medhash.serve import SearchService, ServeConfig
from medhash.serve.background import serve_in_background
from medhash.serve.budget import DecodeBudget, ServerBusyError
from tests.serve_support import archived_codes, live_server, serve_config


def png_bytes(width: int, height: int, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.mark.parametrize("token", ["", "short", "x" * 15])
def test_empty_or_short_tokens_are_refused(token):
    with pytest.raises(InvalidParameterError, match="needs at least 16 characters"):
        ServeConfig(index="i", model="m", token=token)


def test_serve_refuses_an_empty_medhash_token(served_archive):
    result = CliRunner().invoke(main, ["serve", "--index", str(served_archive.index_dir), "--model",
                                       str(served_archive.model_path)], env={"MEDHASH_TOKEN": ""})
    assert result.exit_code == 2 and "MEDHASH_TOKEN is set but empty" in result.output
    result = CliRunner().invoke(main, ["serve", "--index", str(served_archive.index_dir), "--model",
                                       str(served_archive.model_path), "--token", "abc"])
    assert result.exit_code == 1 and "the bearer token is 3 characters" in result.output


def _query_with_ties(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """An archived code and a k whose k-th distance is shared by the (k+1)-th item."""
    for q in codes:
        d = np.sort(np.unpackbits(codes ^ q, axis=1).sum(axis=1))
        for k in range(1, len(d) - 1):
            if d[k - 1] == d[k]:
                return q, k
    raise AssertionError("no ties in the archive")


def test_ties_never_exceed_max_k_and_say_truncated(served_archive):
    q, k = _query_with_ties(archived_codes(served_archive))
    with live_server(served_archive, max_k=k) as url:
        tied = httpx.post(f"{url}/v1/search", data={"code": q.tobytes().hex(), "k": str(k), "with_ties": "true"}).json()
        plain = httpx.post(f"{url}/v1/search", data={"code": q.tobytes().hex(), "k": str(k)}).json()
    assert len(tied["hits"]) == k and tied["truncated"] is True
    assert len(plain["hits"]) == k and plain["truncated"] is False


def test_declared_size_over_the_decode_limit_is_413_before_decoding(served_archive):
    bomb = png_bytes(7000, 7000)  # ~50 KB on disk, under the pixel limit, ~1.2 GB to decode
    assert len(bomb) < 100_000
    with live_server(served_archive) as url:
        t0 = time.perf_counter()
        response = httpx.post(f"{url}/v1/search", files={"image": ("bomb.png", bomb, "image/png")}, timeout=60)
        seconds = time.perf_counter() - t0
    assert response.status_code == 413 and response.json()["kind"] == "too_large"
    assert "declares 7000x7000 pixels" in response.json()["detail"] and "768 MB per image" in response.json()["detail"]
    assert seconds < 2.0  # the header alone was read (decoding took 2.7 s and ~0.9 GB)


def test_a_full_decode_budget_answers_503_with_retry_after(served_archive):
    service = SearchService.open(serve_config(served_archive, decode_wait_s=0.2))
    with serve_in_background(service) as url:
        service.decode_budget.in_use = service.decode_budget.capacity  # as if other decodes held it all
        response = httpx.post(f"{url}/v1/search", files={"image": ("a.png", png_bytes(64, 64), "image/png")})
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert "decode budget" in response.json()["detail"]
        service.decode_budget.in_use = 0
        assert httpx.post(f"{url}/v1/search", files={"image": ("a.png", png_bytes(64, 64), "image/png")}).status_code == 200


def test_decode_budget_queues_then_refuses():
    async def scenario():
        budget = DecodeBudget(100, wait_s=0.1)
        async with budget.reserve(80):
            with pytest.raises(ServerBusyError):
                async with budget.reserve(50):
                    pass
            waiter = asyncio.create_task(_hold(budget, 50))
            await asyncio.sleep(0.02)
        assert await waiter == 50 and budget.in_use == 0  # admitted once the first released

    asyncio.run(scenario())


async def _hold(budget: DecodeBudget, n: int) -> int:
    async with budget.reserve(n):
        return budget.in_use


def test_echoed_values_are_truncated(served_archive):
    with live_server(served_archive) as url:
        missing = httpx.get(f"{url}/v1/images/{'x' * 5000}")
        invalid = httpx.post(f"{url}/v1/search", data={"code": "00", "k": "9" * 100_000})
        empty = httpx.post(f"{url}/v1/search", files={"image": ("n" * 100_000 + ".png", b"", "image/png")})
    assert missing.status_code == 404 and len(missing.text) < 300
    assert invalid.status_code == 422 and len(invalid.text) < 1000
    assert empty.status_code in (400, 422) and len(empty.text) < 400


def test_search_parameters_are_bounded(served_archive):
    with live_server(served_archive) as url:
        response = httpx.post(f"{url}/v1/search", data={"code": "00" * 4, "ef_search": str(10**9)})
    assert response.status_code == 422
