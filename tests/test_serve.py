"""The HTTP API through the real stack (uvicorn on 127.0.0.1, httpx): search, auth, limits, archive safety."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_support import archived_codes, live_server

from medhash.app.fixtures import ServedArchive
from medhash.codes_format import write_code_shard, write_codes_manifest
from medhash.data.overlay import BOX_COLOR
from medhash.encoding import EncodeResult
from medhash.index import BuildConfig, build_index, load_manifest
from medhash.serve.batcher import EncodeBatcher

# A live uvicorn server per module: a hang (a stuck socket, a batcher thread) should fail fast.
pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def server(served_archive):
    with live_server(served_archive, max_upload_bytes=2_000_000, max_k=100) as url:
        yield url


def upload(path: Path, name: str | None = None) -> dict:
    return {"image": (name or path.name, path.read_bytes(), "image/png")}


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(np.bitwise_xor(a, b)).sum())


# -- search -------------------------------------------------------------------------------------------
def test_search_by_image_ranks_by_hamming_distance(server, served_archive):
    codes = archived_codes(served_archive)
    query = served_archive.image_paths[5]
    r = httpx.post(f"{server}/v1/search", files=upload(query), data={"k": "8", "overlay": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert bytes.fromhex(body["query"]["code_hex"]) == codes[5].tobytes()
    expected = sorted(hamming(codes[5], c) for c in codes)[:8]
    assert [h["distance"] for h in body["hits"]] == expected
    ids = [p.stem for p in served_archive.image_paths]
    for hit in body["hits"]:  # each reported distance is the true one of that archived image
        assert hit["distance"] == hamming(codes[5], codes[ids.index(hit["image_id"])])
    assert ids[5] in [h["image_id"] for h in body["hits"] if h["distance"] == 0]
    x0, y0, x1, y1 = body["query"]["box"]
    assert 0 <= x0 < x1 <= body["query"]["width"] and 0 <= y0 < y1 <= body["query"]["height"]
    assert body["query"]["overlay_png"].startswith("data:image/png;base64,")
    Image.open(io.BytesIO(base64.b64decode(body["query"]["overlay_png"].split(",", 1)[1]))).verify()
    assert set(body["timings_ms"]) >= {"decode", "encode", "search", "total"}


def test_search_by_code_hex_and_base64_agree_with_image_search(server, served_archive):
    by_image = httpx.post(f"{server}/v1/search", files=upload(served_archive.image_paths[3]), data={"k": "6"}).json()
    code = bytes.fromhex(by_image["query"]["code_hex"])
    for text in (code.hex(), base64.b64encode(code).decode()):
        # The upload's file name is an archived id, so its hit is marked as the query; a code names it explicitly.
        r = httpx.post(f"{server}/v1/search", data={"code": text, "k": "6",
                                                    "query_image_id": served_archive.image_paths[3].stem})
        assert r.status_code == 200, r.text
        assert r.json()["hits"] == by_image["hits"] and r.json()["query"]["kind"] == "code"


def test_with_ties_returns_everything_at_the_kth_distance(server, served_archive):
    codes = archived_codes(served_archive)
    distances = np.sort([hamming(codes[0], c) for c in codes])
    k = 3
    body = httpx.post(f"{server}/v1/search", data={"code": codes[0].tobytes().hex(), "k": str(k),
                                                    "with_ties": "true"}).json()
    assert len(body["hits"]) == int((distances <= distances[k - 1]).sum())


@pytest.mark.shared
def test_dicom_upload_is_searched_and_leaks_no_identity(server, shared_data):
    import pydicom

    for path in sorted((shared_data / "dicom-samples").glob("*.dcm"))[:2]:
        r = httpx.post(f"{server}/v1/search", files={"image": (path.name, path.read_bytes(), "application/dicom")},
                       data={"k": "3"})
        assert r.status_code == 200, r.text
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for value in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
            if len(value) > 2:
                assert value not in r.text


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload, fragment", [
    ({"files": {"image": ("notes.png", b"this is not an image", "image/png")}}, "notes.png"),
    ({"files": {"image": ("cut.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0", "image/png")}}, "cut.png"),
])
def test_bad_image_is_400_naming_the_file(server, payload, fragment):
    r = httpx.post(f"{server}/v1/search", **payload)
    assert r.status_code == 400 and fragment in r.json()["detail"]


@pytest.mark.parametrize("data, files", [
    ({"k": "3"}, None),  # neither image nor code
    ({"code": "00"}, None),  # wrong length
    ({"code": "zz" * 4}, None),  # neither hex nor base64 of 4 bytes
    ({"code": "00" * 4, "k": "0"}, None),
    ({"code": "00" * 4, "k": "101"}, None),  # over max_k
    ({"code": "00" * 4}, "image"),  # both
])
def test_bad_query_is_422(server, served_archive, data, files):
    kwargs = {"data": data}
    if files:
        kwargs["files"] = upload(served_archive.image_paths[0])
    r = httpx.post(f"{server}/v1/search", **kwargs)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_upload_over_the_limit_is_413(server):
    big = np.random.default_rng(0).integers(0, 255, (1600, 1600), dtype=np.uint8)  # ~2.6 MB PNG of noise
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    r = httpx.post(f"{server}/v1/search", files={"image": ("big.png", buffer.getvalue(), "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
        for _ in range(40):
            yield b"x" * 100_000

    r = httpx.post(f"{server}/v1/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413


# -- auth ----------------------------------------------------------------------------------------------
def test_token_is_required_when_configured(served_archive):
    with live_server(served_archive, token="s3cret-0123456789abcdef") as url:
        assert httpx.get(f"{url}/healthz").status_code == 200  # liveness stays open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = httpx.get(f"{url}/v1/info", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401
            assert httpx.post(f"{url}/v1/search", data={"code": "00" * 4}, headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret-0123456789abcdef"}
        assert httpx.get(f"{url}/v1/info", headers=good).status_code == 200
        assert httpx.post(f"{url}/v1/search", data={"code": "00" * 4}, headers=good).status_code == 200


# -- archived images ------------------------------------------------------------------------------------
def test_thumbnails_and_overlays_of_hits(server, served_archive):
    body = httpx.post(f"{server}/v1/search", files=upload(served_archive.image_paths[2]), data={"k": "3"}).json()
    hit = body["hits"][0]
    plain = httpx.get(f"{server}{hit['thumbnail_url']}")
    assert plain.status_code == 200 and plain.headers["content-type"] == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(httpx.get(f"{server}{hit['overlay_url']}").content)).convert("RGB"))
    green = np.all(overlay == BOX_COLOR, axis=2)
    ys, xs = np.nonzero(green)
    x0, y0, x1, y1 = hit["box"]  # thumbnails of these 64 px phantoms are not scaled
    assert len(xs) and xs.min() == x0 and ys.min() == y0 and xs.max() == x1 - 1 and ys.max() == y1 - 1
    small = Image.open(io.BytesIO(httpx.get(f"{server}{hit['thumbnail_url']}", params={"size": 32}).content))
    assert max(small.size) == 32


@pytest.mark.parametrize("path", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..%2Fmodel.pt", "no-such-id"])
def test_image_ids_are_never_paths(server, path):
    r = httpx.get(f"{server}/v1/images/{path}")
    assert r.status_code == 404
    assert b"root:" not in r.content


@pytest.fixture(scope="module")
def hostile_archive(served_archive, tmp_path_factory):
    """An index whose records point out of the archive root: an absolute path and a symlink."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "archive"
    root.mkdir()
    secret = base / "secret.png"
    secret.write_bytes(served_archive.image_paths[0].read_bytes())
    (root / "inside.png").write_bytes(served_archive.image_paths[1].read_bytes())
    (root / "link.png").symlink_to(secret)
    (root / "sub").mkdir()
    codes = archived_codes(served_archive)[:4]
    from medhash.index import HammingIndex

    model_id = HammingIndex(served_archive.index_dir).model_id
    write_code_shard(base / "codes" / "part-00000.parquet", model_id=model_id, bits=32,
                     image_ids=["inside", "absolute", "symlink", "dotdot"],
                     paths=["inside.png", str(secret), "link.png", "sub/../../secret.png"], codes=codes,
                     boxes=np.tile([0, 0, 8, 8], (4, 1)), labels=[("No Finding",)] * 4)
    write_codes_manifest(base / "codes", model_id=model_id, bits=32)
    build_index(base / "codes", base / "index", BuildConfig(kind="flat"))
    return replace(served_archive, root=root, index_dir=base / "index")


def test_records_pointing_out_of_the_root_are_refused(hostile_archive: ServedArchive):
    with live_server(hostile_archive) as url:
        assert httpx.get(f"{url}/v1/images/inside").status_code == 200
        for image_id in ("absolute", "symlink", "dotdot"):
            r = httpx.get(f"{url}/v1/images/{image_id}")
            assert r.status_code == 404 and "outside the archive root" in r.json()["detail"], image_id


def test_without_archive_root_no_image_is_served(served_archive):
    with live_server(served_archive, archive_root=None) as url:
        body = httpx.post(f"{url}/v1/search", data={"code": "00" * 4, "k": "2"}).json()
        assert all(h["thumbnail_url"] is None for h in body["hits"])
        r = httpx.get(f"{url}/v1/images/{body['hits'][0]['image_id']}")
        assert r.status_code == 404 and "archive-root" in r.json()["detail"]


# -- facts, metrics, schema -----------------------------------------------------------------------------
def test_info_matches_the_index_manifest(server, served_archive):
    info = httpx.get(f"{server}/v1/info").json()
    manifest = load_manifest(served_archive.index_dir)
    assert (info["model_id"], info["bits"], info["kind"], info["count"]) == \
        (manifest.model_id, manifest.bits, manifest.kind, manifest.count)
    assert info["index_created"] == manifest.created_at and info["thumbnails"] is True


def test_metrics_count_searches_and_requests(server, served_archive):
    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = httpx.get(f"{server}/metrics").text
    for _ in range(3):
        httpx.post(f"{server}/v1/search", data={"code": "00" * 4})
    after = httpx.get(f"{server}/metrics").text
    assert value(after, 'medhash_searches_total{query="code"}') - value(before, 'medhash_searches_total{query="code"}') == 3
    assert value(after, 'medhash_http_requests_total{method="POST",route="/v1/search",status="200"}') >= 3
    assert "medhash_encode_batch_size_bucket" in after
    assert value(after, "medhash_index_codes ") == len(served_archive.image_paths)
    assert value(after, "medhash_encoder_queue ") == 0


def test_openapi_schema_describes_the_api(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    paths = schema["paths"]
    assert {"/v1/search", "/v1/images/{image_id}", "/v1/info", "/healthz", "/metrics"} <= set(paths)
    form = paths["/v1/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = form["$ref"].rsplit("/", 1)[1]
    props = schema["components"]["schemas"][ref]["properties"]
    assert {"image", "code", "k", "with_ties", "overlay"} <= set(props)
    assert paths["/v1/search"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "SearchResponse")
    assert "image/png" in paths["/v1/images/{image_id}"]["get"]["responses"]["200"]["content"]
    assert any(s.get("scheme") == "bearer" for s in schema["components"]["securitySchemes"].values())
    assert httpx.get(f"{server}/docs").status_code == 404  # its scripts would come from a CDN
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text  # no external assets: works offline


# -- batching -------------------------------------------------------------------------------------------
def test_requests_arriving_during_a_forward_pass_share_the_next_one():
    started, release, batches = threading.Event(), threading.Event(), []

    def slow_encode(images):
        batches.append(len(images))
        if len(batches) == 1:
            started.set()
            release.wait(10)
        n = len(images)
        return EncodeResult(np.arange(n, dtype=np.uint8)[:, None].repeat(4, 1), np.zeros((n, 4), np.int32),
                            np.zeros((n, 2, 2), np.float32), np.zeros((n, 15), np.float32))

    async def scenario():
        batcher = EncodeBatcher(slow_encode, max_batch=3)
        first = asyncio.ensure_future(batcher.encode(np.zeros((4, 4), np.float32)))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        rest = [asyncio.ensure_future(batcher.encode(np.full((4, 4), i, np.float32))) for i in range(5)]
        while batcher.pending() < 5:
            await asyncio.sleep(0.01)
        release.set()
        results = await asyncio.gather(first, *rest)
        batcher.close()
        return results

    results = asyncio.run(scenario())
    assert batches == [1, 3, 2]  # max_batch caps the second pass; the rest go in the third
    assert [r.batch_size for r in results] == [1, 3, 3, 3, 2, 2]
    assert [int(r.code[0]) for r in results] == [0, 0, 1, 2, 0, 1]  # each request gets its own row back


def test_an_encoder_failure_reaches_every_waiting_request():
    def broken(images):
        raise RuntimeError("out of memory")

    async def scenario():
        batcher = EncodeBatcher(broken)
        outcome = await asyncio.gather(*(batcher.encode(np.zeros((4, 4), np.float32)) for _ in range(3)),
                                       return_exceptions=True)
        batcher.close()
        return outcome

    assert all(isinstance(o, RuntimeError) for o in asyncio.run(scenario()))


def test_serve_cli_refuses_a_model_of_another_index(served_archive, tmp_path):
    import torch
    from click.testing import CliRunner

    from medhash.cli import main
    from medhash.model import AGHashNet, ModelConfig, save_checkpoint

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_checkpoint(other, AGHashNet(ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=48, fusion_dim=32)))
    result = CliRunner().invoke(main, ["serve", "--index", str(served_archive.index_dir), "--model", str(other),
                                       "--port", "0"])
    assert result.exit_code != 0
    assert "is not the model this index was built with" in str(result.exception) + result.output
    assert os.environ.get("MEDHASH_TOKEN") is None


def test_search_parameters_are_settable_per_query(served_archive, tmp_path):
    build_index(served_archive.root / "codes", tmp_path / "ivf", BuildConfig(kind="ivf", params={"nlist": 4, "nprobe": 1}))
    codes = archived_codes(served_archive)
    exact = sorted(hamming(codes[7], c) for c in codes)[:10]
    with live_server(replace(served_archive, index_dir=tmp_path / "ivf")) as url:
        def distances(**extra) -> list[int]:
            r = httpx.post(f"{url}/v1/search", data={"code": codes[7].tobytes().hex(), "k": "10", **extra})
            assert r.status_code == 200, r.text
            return [h["distance"] for h in r.json()["hits"]]

        assert distances(nprobe="4") == exact  # every list visited: exact
        assert all(d >= e for d, e in zip(distances(nprobe="1"), exact))  # one list: never closer than exact
        assert httpx.post(f"{url}/v1/search", data={"code": codes[7].tobytes().hex(), "nprobe": "0"}).status_code == 422
