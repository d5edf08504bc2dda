"""The server's filtered search and live index updates, through the real stack (uvicorn on 127.0.0.1, httpx)."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from serve_support import archived_codes, live_server

from medhash.app.fixtures import PATIENT_SECRET, archive_metadata
from medhash.cli import main
from medhash.codes_format import write_code_shard, write_codes_manifest
from medhash.data.keyed import keyed_hash
from medhash.index import IDS_FILE

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("secret") / "site.key"
    path.write_bytes(PATIENT_SECRET)
    return path


@pytest.fixture(scope="module")
def server(served_archive, secret_file):
    with live_server(served_archive, max_k=100, patient_key_secret_file=str(secret_file)) as url:
        yield url


@pytest.fixture(scope="module")
def codes(served_archive):
    return archived_codes(served_archive)


def search(url: str, **form) -> httpx.Response:
    return httpx.post(f"{url}/v1/search", data={k: str(v) for k, v in form.items()}, timeout=30)


def test_filtered_search_returns_only_passing_hits_with_facts(server, codes):
    r = search(server, code=codes[0].tobytes().hex(), k=10, filter="sex=F;age=30..70")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "scan_selected" and body["filter"] == {"sex": ["F"], "age": {"min": 30.0, "max": 70.0}}
    assert body["selected"] == sum(1 for i in range(48) if archive_metadata(i)["sex"] == "F"
                                   and 30 <= int(archive_metadata(i)["age"]) <= 70)
    assert body["hits"]
    for hit in body["hits"]:
        assert hit["sex"] == "F" and 30 <= hit["age"] <= 70 and hit["view"] in ("PA", "AP")


def test_query_image_is_marked_and_its_patient_excluded(server, codes, served_archive):
    own = served_archive.image_paths[4].stem  # phantom ids are the file stems
    r = search(server, code=codes[4].tobytes().hex(), k=5, query_image_id=own)
    body = r.json()
    assert body["query"]["archived_image_id"] == own
    assert body["hits"][0]["image_id"] == own and body["hits"][0]["is_query"]
    r = search(server, code=codes[4].tobytes().hex(), k=48, filter=f"not_patient={own}")
    ids = [h["image_id"] for h in r.json()["hits"]]
    partner = served_archive.image_paths[5].stem  # images 4 and 5 share a patient
    assert own not in ids and partner not in ids and len(ids) == 46
    by_id = search(server, code=codes[4].tobytes().hex(), k=48, filter="not_patient_id=patient-2").json()
    assert [h["image_id"] for h in by_id["hits"]] == ids
    assert "patient-2" not in str(by_id) and by_id["filter"]["not_patient_key"] == [keyed_hash("patient-2", PATIENT_SECRET)]


def test_empty_selection_is_an_empty_answer(server, codes):
    r = search(server, code=codes[0].tobytes().hex(), filter="labels_any=NoSuchFinding")
    assert r.status_code == 200 and r.json()["hits"] == [] and r.json()["strategy"] == "empty"


@pytest.mark.parametrize("text, part", [("age=x..", "'age=x..'"), ("weight=3", "'weight'"), ("{", "JSON"),
                                        ("not_patient=nope", "'not_patient'")])
def test_bad_filter_is_422_naming_the_part(server, codes, text, part):
    r = search(server, code=codes[0].tobytes().hex(), filter=text)
    assert r.status_code == 422 and part in r.json()["detail"]


def test_openapi_describes_the_filter_and_reload(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    form = schema["components"]["schemas"]["Body_search_v1_search_post"]["properties"]
    assert "labels_any" in form["filter"]["description"]
    assert "/v1/reload" in schema["paths"]
    assert "strategy" in schema["components"]["schemas"]["SearchResponse"]["properties"]


def test_index_remove_and_add_under_load(served_archive, codes, tmp_path):
    """index remove / add while the server answers a steady search load: no failed request, and once the
    server reports the new version no removed id is returned or served."""
    index_dir = tmp_path / "index"
    shutil.copytree(served_archive.index_dir, index_dir)
    removed = [served_archive.image_paths[i].stem for i in (3, 17, 30)]
    (tmp_path / "remove.txt").write_text("\n".join(removed) + "\n")
    # The removed images' codes, as a codes folder to add back later.
    table = pq.read_table(index_dir / IDS_FILE)
    rows = [table.column("image_id").to_pylist().index(i) for i in removed]
    back = tmp_path / "back"
    write_code_shard(back / "part-00000.parquet", model_id=pq.read_metadata(
        served_archive.root / "codes" / "part-00000.parquet").metadata[b"medhash.model_id"].decode(),
        bits=codes.shape[1] * 8, image_ids=removed, paths=[table.column("path")[r].as_py() for r in rows],
        codes=codes[[3, 17, 30]], boxes=np.zeros((3, 4), np.int32), labels=[["Mass"]] * 3,
        hash_values=np.load(index_dir / "hash_values.npy")[rows])  # the archive stores them: add refuses codes without
    write_codes_manifest(back, model_id=pq.read_metadata(back / "part-00000.parquet").metadata[b"medhash.model_id"].decode(),
                         bits=codes.shape[1] * 8)

    config = dict(index=str(index_dir), reload_poll_ms=50, max_k=100)
    with live_server(served_archive, **config) as url:
        log: list[tuple[float, float, int, int, list[str]]] = []  # (start, end, status, generation, ids)
        stop = threading.Event()

        def load(worker: int):
            with httpx.Client(timeout=30) as client:
                i = worker
                while not stop.is_set():
                    code = codes[[3, 17, 30][i % 3]].tobytes().hex()
                    t0 = time.monotonic()
                    r = client.post(f"{url}/v1/search", data={"code": code, "k": "5"})
                    body = r.json() if r.status_code == 200 else {}
                    log.append((t0, time.monotonic(), r.status_code, body.get("generation", -1),
                                [h["image_id"] for h in body.get("hits", [])]))
                    i += 1

        threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            result = CliRunner().invoke(main, ["index", "remove", "--index", str(index_dir),
                                               "--ids", str(tmp_path / "remove.txt")])
            assert result.exit_code == 0, result.output
            switched = _wait_for(url, generation=1)
            time.sleep(0.5)
            for image_id in removed:
                assert httpx.get(f"{url}/v1/images/{image_id}").status_code == 404
            result = CliRunner().invoke(main, ["index", "add", "--index", str(index_dir), "--codes", str(back)])
            assert result.exit_code == 0, result.output
            added = _wait_for(url, generation=2)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert log and all(status == 200 for _, _, status, _, _ in log), "no failed request"
        after_removal = [ids for start, _, _, gen, ids in log if gen == 1]
        assert after_removal and not any(set(ids) & set(removed) for ids in after_removal)
        assert all(gen >= 1 for start, _, _, gen, _ in log if switched < start), "requests after the switch use it"
        assert all(gen == 2 for start, _, _, gen, _ in log if added < start)
        assert any(set(ids) & set(removed) for start, _, _, gen, ids in log if gen == 2), "added back"
        assert httpx.post(f"{url}/v1/reload").json() == {"reloaded": False, "generation": 2, "count": 48}


def _wait_for(url: str, generation: int, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/v1/info").json()["generation"] == generation:
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"the server never reached generation {generation}")


def test_reload_endpoint_needs_the_token(served_archive):
    with live_server(served_archive, token="s3cret-reload-token-1", reload_poll_ms=0) as url:
        assert httpx.post(f"{url}/v1/reload").status_code == 401
        r = httpx.post(f"{url}/v1/reload", headers={"Authorization": "Bearer s3cret-reload-token-1"})
        assert r.status_code == 200 and r.json()["reloaded"] is False


def test_config_change_does_not_touch_unfiltered_answers(served_archive, codes):
    with live_server(served_archive, reload_poll_ms=0) as url:
        body = search(url, code=codes[0].tobytes().hex(), k=3).json()
        assert body["strategy"] is None and body["filter"] is None and body["generation"] == 0


