"""The service when things go wrong: an oversized chunked body, a bad upload, a kept upload's
id that is not one, a run that fails, Prefect not reachable, a champion that cannot be loaded
or fails the model check, a generation that fails midway; and the upload steps that need no
Prefect (build_tokenizer)."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import torch

from serve.local_runs import LocalRun
from serve.settings import Settings
from tests.serve.conftest import (
    Process,
    altered_checkpoint,
    embedded_service,
    free_port,
    sse_events,
    start_service,
    until,
    wait_for,
)

MB = 1024 * 1024
UPLOAD_LIMIT = Settings().max_upload_bytes  # `tinygpt serve` keeps the default
BODY_LIMIT = Settings().max_body_bytes
BASE = {"prompt": "ROMEO:", "max_new_tokens": 8, "seed": 7}
FAILS_FROM = 8  # the fragile model's first position that overflows


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS) or at its peak so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@dataclass
class Answer:
    status: int
    body: dict
    sent: int          # body bytes the client sent before it had the answer
    seconds: float     # from the request's first byte to the whole answer


def post_chunked(url: str, path: str, size: int, timeout: float = 60.0) -> Answer:
    """POST `size` bytes to path as a chunked body (no Content-Length to refuse up front) from
    a raw socket, 1 MB a chunk; before each chunk, if the server has answered, stop sending, as
    a client reading its socket does."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    chunk = b"x" * MB
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                     f"\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        sent = 0
        try:
            while sent < size and not select.select([sock], [], [], 0)[0]:
                sock.sendall(framed)
                sent += len(chunk)
            if sent >= size:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed its side after answering: the answer is waiting
        status, body = read_answer(sock)
    return Answer(status, body, sent, time.monotonic() - started)


def read_answer(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the HTTP answer on sock (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < answer_end(data):
        try:
            more = sock.recv(65536)
        except ConnectionResetError:
            more = b""
        assert more, f"the connection ended before a whole answer: {data[:200]!r}"
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body[:answer_end(data) - len(head) - 4])


def answer_end(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    raise AssertionError(f"an answer without Content-Length: {head!r}")


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


@pytest.mark.parametrize("route", ["/generate", "/v1/completions"])
def test_a_chunked_body_over_the_cap_gets_413_as_it_arrives(no_prefect, route):
    """300 MB, chunked: the 413 comes once the route's cap (64 KB) has arrived, with the rest
    unsent, and the service's peak memory barely moves (it used to read the whole body)."""
    proc, url, _ = no_prefect
    peak, now = rss_bytes(proc.proc.pid, "VmHWM"), rss_bytes(proc.proc.pid)
    answer = post_chunked(url, route, 300 * MB)
    peak_grown = rss_bytes(proc.proc.pid, "VmHWM") - peak
    grown = rss_bytes(proc.proc.pid) - now
    print(f"{route}: {answer.status} after {answer.seconds:.3f} s and {answer.sent / MB:.0f} MB "
          f"sent; resident memory {grown / MB:+.1f} MB, its peak {peak_grown / MB:+.1f} MB")
    assert answer.status == 413, answer
    assert answer.body == {"detail": f"request body over the {BODY_LIMIT}-byte limit"}
    assert answer.sent < 300 * MB and answer.seconds < 30, answer
    assert peak_grown < 50 * MB and grown < 50 * MB, (peak_grown / MB, grown / MB)
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
    corpus = shakespeare.encode()  # all of Tiny Shakespeare: an upload's 5 MB limit, not JSON's
    assert len(corpus) > 1_000_000
    whole = build(kind="bpe", vocab_size=400)
    assert whole.status_code == 200, whole.text
    assert whole.json()["valid"] and whole.json()["vocab_size"] == 400
    too_small = build(kind="bpe", vocab_size=100)
    assert too_small.status_code == 422 and "vocab_size must be between" in too_small.text
    assert build(kind="wordpiece").status_code == 422
    bad = httpx.post(f"{url}/build_tokenizer", params={"filename": "notes.txt"}, timeout=60,
                     content=b"good text\n\nthen \xff bad\n")
    assert bad.status_code == 422
    assert bad.json()["errors"] == "notes.txt: invalid UTF-8 at byte offset 16 (byte 0xff)"
    assert list((cwd / "uploads").iterdir()) == []


def test_a_kept_upload_is_trained_by_its_id_and_nothing_else_is(no_prefect, shakespeare):
    """build_tokenizer with keep=true keeps the upload and its vocabulary's settings under an
    id; /train refuses an id it never gave (404), one that is no id (422) and nonsense steps;
    with no Prefect API, an unknown run is a 404 and no temporary Prefect server starts."""
    proc, url, cwd = no_prefect
    built = httpx.post(f"{url}/build_tokenizer", timeout=120, content=shakespeare[:40_000],
                       params={"filename": "plays.txt", "kind": "bpe", "vocab_size": 300,
                               "keep": "true"})
    assert built.status_code == 200, built.text
    upload_id = built.json()["upload_id"]
    kept = sorted(p.name for p in (cwd / "uploads").iterdir())
    assert kept == [f"{upload_id}-plays.txt", f"{upload_id}.vocabulary.json"]
    settings = json.loads((cwd / "uploads" / kept[1]).read_text())
    assert settings["overrides"] == ["tokenizer.kind=bpe", "tokenizer.vocab_size=300"]
    assert settings["digest"] == built.json()["digest"]
    for body, status in (({"upload_id": "0123456789ab"}, 404), ({"upload_id": "../../etc"}, 422),
                         ({"upload_id": upload_id, "max_steps": 0}, 422),
                         ({"upload_id": upload_id, "steps": 5}, 422)):
        response = httpx.post(f"{url}/train", json=body, timeout=30)
        assert response.status_code == status, (body, response.text)
    run = httpx.get(f"{url}/runs/{uuid.uuid4()}", timeout=30)
    assert run.status_code == 404 and run.json()["detail"] == "no such run"
    assert descendants(proc.proc.pid) == []  # no temporary Prefect server, no run
    for path in (cwd / "uploads").iterdir():  # as the other tests here expect the folder
        path.unlink()


def test_an_embedded_run_that_fails_reports_its_last_line(tmp_path):
    """A run's state as /runs/{id} reports it, from the real process: Running with its newest
    progress line, then Failed with its error line (the CLI's one-line error)."""
    script = ("import sys; print('2026-12-06 12:00:01,5 INFO tinygpt.train: step 10/50 | loss 3.2',"
              " flush=True); sys.stdin.readline(); print('tinygpt: error: the corpus is empty');"
              " sys.exit(1)")
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", script], stdout=out,
                                   stdin=subprocess.PIPE)
    run = LocalRun("r1", process, log, tmp_path / "summary.json")
    running = until(lambda: (s := run.state("champion"))["progress"] and s)
    assert (running["state"], running["final"], running["progress"]) == (
        "Running", False, "step 10/50 | loss 3.2")
    process.communicate(b"\n", timeout=30)
    failed = run.state("champion")
    assert (failed["state"], failed["final"]) == ("Failed", True)
    assert failed["error"] == "tinygpt: error: the corpus is empty" and "outcome" not in failed


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


def overflow_late(weights: dict[str, torch.Tensor]) -> None:
    """Positions from FAILS_FROM on get a position embedding near float32's largest value,
    which LayerNorm turns into NaN: finite weights, and finite logits for check_model's first
    tokens, so the model serves, and sampling fails for real a few tokens into a generation."""
    weights["transformer.wpe.weight"][FAILS_FROM:, 0] = 3e38


@pytest.fixture(scope="module")
def fragile(registry, tmp_path_factory) -> Iterator[str]:
    """The service serving a checkpoint folder whose generations fail at position FAILS_FROM."""
    cwd = tmp_path_factory.mktemp("fragile")
    folder = altered_checkpoint(registry.root / "ckpt-tinygpt-0", cwd / "ckpt-fragile",
                                overflow_late)
    proc, url = start_service("sqlite:///nowhere.db", cwd, "--model", str(folder))
    try:
        wait_for(f"{url}/health")
        yield url
    finally:
        proc.stop()


FAILING = {"prompt": "ROMEO:", "max_new_tokens": 30, "temperature": 0.8, "seed": 7}


def fragile_name(url: str) -> str:
    return httpx.get(f"{url}/health").json()["model"]


def test_a_stream_that_fails_ends_with_an_error_then_its_end_marker(fragile):
    with httpx.stream("POST", f"{fragile}/generate/stream", json=FAILING,
                      timeout=60) as response:
        assert response.status_code == 200
        events = list(sse_events(response))
    kinds = [event for event, _ in events]
    assert kinds[-2:] == ["error", "done"] and set(kinds[:-2]) == {"piece"}, kinds
    assert events[-2][1]["detail"].startswith("generation failed (RuntimeError)")
    assert 0 < events[-1][1]["completion_tokens"] < FAILING["max_new_tokens"]

    asked = {"model": fragile_name(fragile), "prompt": "ROMEO:", "max_tokens": 30,
             "temperature": 0.8, "seed": 7, "stream": True}
    with httpx.stream("POST", f"{fragile}/v1/completions", json=asked, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "generation failed" in error["message"]
    assert json.loads(lines[0].removeprefix("data: "))["choices"][0]["text"]
    client = openai.OpenAI(base_url=f"{fragile}/v1", api_key="not-needed", max_retries=0)
    with pytest.raises(openai.APIError, match="generation failed"):
        list(client.completions.create(**asked))


def server_errors(url: str, route: str) -> float:
    prefix = f'tinygpt_requests_total{{route="{route}",status="500"}} '
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(float(line.removeprefix(prefix)) for line in lines if line.startswith(prefix))


def test_every_server_error_is_counted_in_metrics(fragile):
    before = {route: server_errors(fragile, route) for route in ("/generate", "/v1/completions")}
    plain = httpx.post(f"{fragile}/generate", json=FAILING, timeout=60)
    assert plain.status_code == 500
    assert plain.json()["detail"].startswith("internal error (RuntimeError)")
    asked = {"model": fragile_name(fragile), "prompt": "ROMEO:", "max_tokens": 30,
             "temperature": 0.8, "seed": 7}
    completion = httpx.post(f"{fragile}/v1/completions", json=asked, timeout=60)
    assert completion.status_code == 500
    assert completion.json()["error"]["type"] == "server_error"
    for route, count in before.items():
        assert server_errors(fragile, route) == count + 1, route


def test_a_version_that_fails_the_model_check_is_never_served(registry, tmp_path):
    """Neither swapped in (the one before it keeps serving, /health says why) nor served first:
    a NaN version registered under the alias, and a NaN checkpoint folder."""
    good = registry.register(seed=4, name="tinygpt-checked")
    nan_folder = altered_checkpoint(registry.root / "ckpt-tinygpt-0", tmp_path / "ckpt-nan",
                                    lambda weights: weights["transformer.wpe.weight"].fill_(
                                        float("nan")))
    proc, url = start_service(registry.uri, tmp_path, "--model",
                              "models:/tinygpt-checked@champion", "--model", str(nan_folder),
                              "--poll-seconds", "1")
    try:
        assert wait_for(f"{url}/health").json()["version"] == good
        bad = registry.register(seed=5, name="tinygpt-checked", nan_weights=True)
        health = wait_for(f"{url}/health", status=503, timeout=60).json()
        assert health["status"] == "degraded" and health["version"] == good
        assert health["reason"].startswith(f"ModelCheckFailed: version {bad} of "
                                           f"tinygpt-checked is not served")
        assert "non-finite weights" in health["reason"]
        answer = httpx.post(f"{url}/generate", json=BASE, timeout=60)
        assert answer.status_code == 200 and answer.json()["version"] == good

        def listed() -> list[dict] | None:
            models = httpx.get(f"{url}/models").json()["models"]
            return models if models[1].get("status") != "loading" else None

        default, folder = until(listed)
        assert default["status"] == "degraded" and default["reason"] == health["reason"]
        assert folder["status"] == "unavailable" and "non-finite weights" in folder["error"]
        refused = httpx.post(f"{url}/generate", json={**BASE, "model": str(nan_folder)})
        assert refused.status_code == 503
        assert "fails the model check" in refused.json()["detail"]["error"]
    finally:
        proc.stop()


def test_stopping_the_service_stops_its_embedded_run_and_promotes_nothing(shakespeare,
                                                                         tmp_path):
    """SIGTERM to the service alone (as a process manager stops it): the run it started in
    its project is asked to stop as Ctrl-C asks, and ends without a model version."""
    from mlflow import MlflowClient

    root, store, proc, url = embedded_service(tmp_path, shakespeare[:40_000])
    try:
        built = httpx.post(f"{url}/build_tokenizer", content=shakespeare[40_000:80_000],
                           params={"vocab_size": 300, "keep": "true"}, timeout=120).json()
        started = httpx.post(f"{url}/train", timeout=60, json={
            "upload_id": built["upload_id"], "max_steps": 100_000}).json()
        assert started["where"] == "embedded"
        state = until(lambda: "/100000" in ((s := httpx.get(
            f"{url}/runs/{started['run_id']}", timeout=30).json())["progress"] or "") and s,
            timeout=180)
        assert state["state"] == "Running"
        run_processes = descendants(proc.proc.pid)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=60) == -signal.SIGTERM  # uvicorn's, after shutdown
    finally:
        proc.stop()
    assert not [pid for pid in run_processes if Path(f"/proc/{pid}").exists()]
    log = next((root / "uploads" / "runs").glob("*.log")).read_text()
    assert "run stopped by SIGINT" in log, log[-3000:]
    assert MlflowClient(store, store).search_model_versions("name = 'tinygpt'") == []
