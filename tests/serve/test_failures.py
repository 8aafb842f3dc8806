"""The service when things go wrong: an oversized chunked upload, a bad upload, Prefect not
configured or not reachable, a champion that cannot be loaded; and the upload steps that need
no Prefect (build_tokenizer)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve.settings import Settings
from tests.serve.conftest import Process, free_port, start_service, wait_for

MB = 1024 * 1024
UPLOAD_LIMIT = Settings().max_upload_bytes  # `tinygpt serve` keeps the default
BASE = {"prompt": "ROMEO:", "max_new_tokens": 8, "seed": 7}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def descendants(pid: int) -> list[int]:
    """Every process below pid, from the kernel's per-thread child lists."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in descendants(c)]


@pytest.fixture(scope="module")
def no_prefect(registry, tmp_path_factory) -> Iterator[tuple[Process, str, Path]]:
    """The service with no Prefect API configured: (process, URL, working folder)."""
    cwd = tmp_path_factory.mktemp("no-prefect")
    proc, url = start_service(registry.uri, cwd, env={"PREFECT_API_URL": None})
    try:
        wait_for(f"{url}/health")
        yield proc, url, cwd
    finally:
        proc.stop()


def test_chunked_upload_over_the_limit_is_refused_while_streaming(no_prefect):
    proc, url, cwd = no_prefect
    size, chunk = 100 * MB, b"x" * MB

    def body() -> Iterator[bytes]:  # a generator: chunked, no Content-Length to refuse
        for _ in range(size // MB):
            yield chunk

    before = rss_bytes(proc.proc.pid)
    response = httpx.post(f"{url}/corpus", params={"filename": "big.txt"}, content=body(),
                          timeout=60)
    grown = rss_bytes(proc.proc.pid) - before
    assert response.status_code == 413
    assert response.json() == {
        "detail": f"request body over the {UPLOAD_LIMIT}-byte limit"}
    assert grown < 50 * MB, f"resident memory grew {grown / MB:.1f} MB for a 100 MB body"
    assert list((cwd / "uploads").iterdir()) == []
    assert httpx.get(f"{url}/health").status_code == 200


def test_bad_uploads_are_named_as_the_client_named_them(no_prefect):
    _, url, cwd = no_prefect
    bad_utf8 = httpx.post(f"{url}/corpus", params={"filename": "notes.txt"}, timeout=60,
                          content=b"good text\n\nthen \xff bad\n")
    # every paragraph is mostly control characters: the expectation suite refuses it
    controls = httpx.post(f"{url}/corpus", params={"filename": "noise.txt"}, timeout=60,
                          content=b"\x01\x02\x03\x04 ab\n\nmore \x05\x06\x07\n")
    for response, name in ((bad_utf8, "notes.txt"), (controls, "noise.txt")):
        assert response.status_code == 422, response.text
        errors = response.json()["errors"]
        assert name in errors and "/" not in errors, errors
    assert bad_utf8.json()["errors"] == "notes.txt: invalid UTF-8 at byte offset 16 (byte 0xff)"
    assert "data validation failed" in controls.json()["errors"]
    assert list((cwd / "uploads").iterdir()) == []


def test_build_tokenizer_shows_what_an_upload_gets_and_keeps_nothing(no_prefect, shakespeare):
    _, url, cwd = no_prefect
    corpus = shakespeare[:40_000].encode()

    def build(**query) -> httpx.Response:
        return httpx.post(f"{url}/build_tokenizer", params={"filename": "plays.txt", **query},
                          content=corpus, timeout=120)

    words = build(kind="word", vocab_size=500, min_frequency=2).json()
    assert words["valid"] and (words["kind"], words["vocab_size"]) == ("word", 500)
    assert words["first_tokens"][:4] == ["First", " ", "Citizen", ":"]
    bpe = build(kind="bpe", vocab_size=300).json()
    assert bpe["vocab_size"] == 300 and bpe["bytes_per_token"] < words["bytes_per_token"]
    too_small = build(kind="bpe", vocab_size=100)
    assert too_small.status_code == 422 and "vocab_size must be between" in too_small.text
    assert build(kind="wordpiece").status_code == 422
    bad = httpx.post(f"{url}/build_tokenizer", params={"filename": "notes.txt"}, timeout=60,
                     content=b"good text\n\nthen \xff bad\n")
    assert bad.status_code == 422
    assert bad.json()["errors"] == "notes.txt: invalid UTF-8 at byte offset 16 (byte 0xff)"
    assert list((cwd / "uploads").iterdir()) == []


def test_without_a_prefect_api_retraining_is_503_and_starts_nothing(no_prefect):
    proc, url, cwd = no_prefect
    text = "".join(f"Paragraph {i}: the quick brown fox.\n\n" for i in range(20))
    response = httpx.post(f"{url}/corpus", params={"filename": "fox.txt"}, content=text,
                          timeout=60)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert "prefect server start" in error and "PREFECT_API_URL" in error
    run = httpx.get(f"{url}/runs/{uuid.uuid4()}", timeout=30)
    assert run.status_code == 503 and "prefect server start" in run.json()["detail"]
    assert descendants(proc.proc.pid) == []  # no temporary Prefect server
    assert list((cwd / "uploads").iterdir()) == []


def test_unreachable_prefect_gives_503_not_404(registry, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/api"
    proc, url = start_service(registry.uri, tmp_path, env={"PREFECT_API_URL": closed})
    try:
        wait_for(f"{url}/health")
        response = httpx.get(f"{url}/runs/{uuid.uuid4()}", timeout=30)
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert detail.startswith("Prefect API unreachable: ") and "Traceback" not in detail
    finally:
        proc.stop()


def test_a_champion_that_cannot_load_makes_health_degraded(registry, tmp_path):
    import mlflow

    good = registry.register(seed=2, name="tinygpt-degraded")
    proc, url = start_service(registry.uri, tmp_path, "--model",
                              "models:/tinygpt-degraded@champion", "--poll-seconds", "1")
    try:
        assert wait_for(f"{url}/health").json()["version"] == good
        registry.register(seed=3, name="tinygpt-degraded", loadable=False)
        health = wait_for(f"{url}/health", status=503, timeout=30).json()
        assert health["status"] == "degraded" and health["reason"]
        assert health["version"] == good and health["model"] == "tinygpt-degraded"
        answer = httpx.post(f"{url}/generate", json=BASE, timeout=60)
        assert answer.status_code == 200 and answer.json()["version"] == good
        mlflow.MlflowClient().set_registered_model_alias("tinygpt-degraded", "champion", good)
        assert wait_for(f"{url}/health", timeout=30).json()["status"] == "ok"
    finally:
        proc.stop()


def test_a_full_upload_folder_refuses_uploads_with_a_413(registry, tmp_path):
    """Accepted uploads stay as their runs' data, so the folder has a cap of its own."""
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "accepted-earlier.txt").write_bytes(b"x" * MB)
    proc, url = start_service(registry.uri, tmp_path, "--upload-folder-mb", "1",
                              env={"PREFECT_API_URL": None})
    try:
        wait_for(f"{url}/health")
        response = httpx.post(f"{url}/corpus", params={"filename": "more.txt"},
                              content=b"To be, or not to be\n", timeout=30)
    finally:
        proc.stop()
    assert response.status_code == 413
    assert response.json()["detail"].startswith("the upload folder is full: its accepted "
                                                "uploads fill 1 MB (--upload-folder-mb)")
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == ["accepted-earlier.txt"]
