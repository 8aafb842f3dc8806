"""The HTTP service against a real registry: generation, streaming, limits, bad requests,
metrics, and following the champion alias while requests are in flight."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import torch

from gpt.checkpoint import save_model
from gpt.config import GPT2_BLOCK
from gpt.model import GPT, GPTConfig
from gpt.sft import Fallback
from tests.serve.conftest import sse_events, start_service, until, wait_for

BASE = {"prompt": "ROMEO:", "max_new_tokens": 24, "temperature": 0.9, "top_k": 40, "seed": 7}


def test_health_describes_the_served_model(service):
    health = httpx.get(f"{service}/health").json()
    assert health["status"] == "ok" and health["model"] == "tinygpt"
    assert health["alias"] == "champion" and health["version"]
    assert health["parameters"] > 0 and health["device"] == "cpu"
    assert health["weights"] == "int8"  # --weights auto on a CPU
    assert health["compiled"] is False   # decoding compiles only with --compile


def test_same_seed_and_parameters_give_the_same_text(service):
    first = httpx.post(f"{service}/generate", json=BASE, timeout=60).json()
    second = httpx.post(f"{service}/generate", json=BASE, timeout=60).json()
    assert first["text"] == second["text"] and first["text"]
    assert first["completion_tokens"] == 24 and first["prompt_tokens"] >= 1
    assert first["version"] and first["tokens_per_s"] > 0
    other = httpx.post(f"{service}/generate", json={**BASE, "seed": 8}, timeout=60).json()
    assert other["text"] != first["text"]


def test_stream_sends_pieces_then_stats_and_matches_generate(service):
    with httpx.stream("POST", f"{service}/generate/stream", json=BASE, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    pieces = [data["text"] for event, data in events if event == "piece"]
    assert len(pieces) > 1 and events[-1][0] == "done"
    assert events[-1][1]["completion_tokens"] == 24
    plain = httpx.post(f"{service}/generate", json=BASE, timeout=60).json()
    assert "".join(pieces) == plain["text"]
    with httpx.stream("POST", f"{service}/generate-stream", json=BASE, timeout=60) as response:
        again = [data["text"] for event, data in sse_events(response) if event == "piece"]
    assert again == pieces  # the 003 write-up's route answers the same


def test_degenerate_temperature_and_top_p_sample_greedily_and_never_fail(service):
    """1e-300 is 0 in float32: dividing by it, or keeping a nucleus of that mass, used to leave
    nothing to sample (a 500). Both now pick the most likely token, as temperature 0 does."""
    greedy = httpx.post(f"{service}/generate", json={**BASE, "temperature": 0},
                        timeout=60).json()["text"]
    for degenerate in ({"temperature": 1e-300}, {"top_p": 1e-300},
                       {"temperature": 1e-300, "top_p": 1e-300}):
        body = {**BASE, **degenerate}
        answer = httpx.post(f"{service}/generate", json=body, timeout=60)
        assert answer.status_code == 200, (degenerate, answer.text)
        assert answer.json()["text"] == greedy
        with httpx.stream("POST", f"{service}/generate/stream", json=body, timeout=60) as streamed:
            events = list(sse_events(streamed))
        assert [event for event, _ in events][-1] == "done", (degenerate, events[-2:])
        assert "".join(data["text"] for event, data in events if event == "piece") == greedy


@pytest.mark.parametrize(("body", "field"), [
    ({**BASE, "temperature": "hot"}, "temperature"),
    ({**BASE, "temperature": 9.0}, "temperature"),
    ({**BASE, "max_new_tokens": 0}, "max_new_tokens"),
    ({**BASE, "max_new_tokens": 5000}, "max_new_tokens"),
    ({**BASE, "top_p": 0.0}, "top_p"),
    ({**BASE, "top_k": -3}, "top_k"),
    ({**BASE, "seed": -1}, "seed"),
    ({**BASE, "stop": [""]}, "stop.0"),
    ({**BASE, "prompt": 42}, "prompt"),
    ({**BASE, "prompt": "x" * 9000}, "prompt"),
    ({**BASE, "surprise": 1}, "surprise"),
])
def test_bad_fields_get_422_naming_the_field(service, body, field):
    for route in ("/generate", "/generate/stream"):
        response = httpx.post(f"{service}{route}", json=body, timeout=30)
        assert response.status_code == 422
        assert field in [d["field"] for d in response.json()["detail"]], response.text


def test_prompt_longer_than_the_context_is_refused_not_truncated(service):
    response = httpx.post(f"{service}/generate", json={**BASE, "prompt": "word " * 400})
    assert response.status_code == 422
    assert "the model reads at most 64" in response.json()["detail"][0]["message"]


def test_malformed_requests_never_get_a_500(service):
    cases = [
        httpx.post(f"{service}/generate", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"}),
        httpx.post(f"{service}/generate", content=b"[1, 2]", timeout=30,
                   headers={"content-type": "application/json"}),
        httpx.post(f"{service}/generate", content=b"\xff\xfe", timeout=30,
                   headers={"content-type": "application/json"}),
        httpx.post(f"{service}/generate", content=b"x" * 200_000, timeout=30,
                   headers={"content-type": "application/json"}),
        httpx.get(f"{service}/no/such/route"),
        httpx.get(f"{service}/generate"),
        httpx.get(f"{service}/runs/not-a-uuid"),
    ]
    assert [r.status_code for r in cases] == [422, 422, 422, 413, 404, 405, 422]
    assert httpx.get(f"{service}/health").status_code == 200


def test_requests_beyond_the_queue_get_429(service):
    # The service runs with one generation slot and a queue of one: of six requests sent at
    # once, one runs, one waits, and the rest are refused straight away.
    long = {**BASE, "max_new_tokens": 1000, "temperature": 1.0}
    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def call():
        barrier.wait()
        statuses.append(httpx.post(f"{service}/generate", json=long, timeout=120).status_code)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) == {200, 429}
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1
    assert httpx.post(f"{service}/generate", json=BASE, timeout=60).status_code == 200


def generated_tokens(service: str) -> float:
    for line in httpx.get(f"{service}/metrics").text.splitlines():
        if line.startswith("tinygpt_generated_tokens_total "):
            return float(line.split()[1])
    raise AssertionError("no token counter")


def test_a_client_that_disconnects_stops_the_generation(registry, tmp_path):
    # A model big enough that 1000 tokens take seconds here (the registry's tiny one decodes
    # them in under half a second, less than a loaded machine may take to hang up).
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=registry.tokenizer.vocab_size, block_size=64, n_layer=6,
                          n_head=6, n_embd=384, **GPT2_BLOCK))
    registry.tokenizer.save(tmp_path / "tokenizer")
    folder = save_model(model, tmp_path / "ckpt-slow", assets_dir=tmp_path / "tokenizer")
    proc, url = start_service("sqlite:///nowhere.db", tmp_path, "--model", str(folder))
    try:
        wait_for(f"{url}/health")
        with httpx.stream("POST", f"{url}/generate/stream", timeout=60,
                          json={**BASE, "max_new_tokens": 1000}) as response:
            next(sse_events(response))
        # A stream's tokens are counted when it ends, once the service notices the client
        # left: on a loaded machine that can take longer than any fixed wait, so wait for the
        # count itself.
        generated = until(lambda: generated_tokens(url))
        assert 0 < generated < 1000
        assert httpx.post(f"{url}/generate", json=BASE, timeout=60).status_code == 200
    finally:
        proc.stop()


def test_metrics_in_prometheus_format(service):
    text = httpx.get(f"{service}/metrics").text
    assert 'tinygpt_requests_total{route="/generate",status="200"}' in text
    assert 'tinygpt_requests_total{route="/generate",status="422"}' in text
    assert "tinygpt_request_seconds_bucket" in text
    assert 'tinygpt_model_version{model="tinygpt"}' in text


def test_alias_moving_during_a_stream_swaps_without_failing_it(service, registry):
    old = httpx.get(f"{service}/health").json()["version"]
    with httpx.stream("POST", f"{service}/generate/stream", timeout=120,
                      json={**BASE, "max_new_tokens": 300}) as response:
        events = sse_events(response)
        next(events)
        new = registry.register(seed=1)  # moves champion while the stream runs
        rest = list(events)
    assert rest[-1][0] == "done" and rest[-1][1]["version"] == old
    deadline = time.monotonic() + 30
    while httpx.get(f"{service}/health").json()["version"] != new:
        assert time.monotonic() < deadline, "the service never picked up the new champion"
        time.sleep(0.3)
    assert httpx.post(f"{service}/generate", json=BASE, timeout=60).json()["version"] == new


def test_registry_unreachable_at_start_gives_503_then_recovers(registry, tmp_path):
    from tests.serve.conftest import BIN, Process, free_port

    port = free_port()
    proc, url = start_service(f"http://127.0.0.1:{port}", tmp_path)
    mlflow_server = None
    try:
        response = wait_for(f"{url}/health", status=503)
        assert response.json()["detail"]["status"] in ("loading", "unavailable")
        assert httpx.post(f"{url}/generate", json=BASE).status_code == 503
        mlflow_server = Process(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", registry.uri,
             "--host", "127.0.0.1", "--port", str(port)],
            dict(__import__("os").environ), tmp_path, tmp_path / "mlflow-server.log")
        health = wait_for(f"{url}/health").json()
        assert health["model"] == "tinygpt"
    finally:
        proc.stop()
        if mlflow_server is not None:
            mlflow_server.stop()


def test_uploads_never_leave_their_folder(tmp_path):
    from serve.upload import upload_path

    root = tmp_path / "uploads"
    root.mkdir()
    for name in ("../../etc/passwd", "/abs/path.txt", "..\\..\\win.jsonl", "", "...",
                 "a" * 300 + ".jsonl", "ok name.txt"):
        path = upload_path(root, name)
        assert path.parent == root.resolve(), name
        assert path.suffix in (".txt", ".jsonl")


def test_mlflow_models_serve_answers_with_the_same_pyfunc(registry, tmp_path):
    import os

    from tests.serve.conftest import BIN, Process, free_port

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.uri,
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    server = Process([str(BIN / "mlflow"), "models", "serve", "-m", "models:/tinygpt@champion",
                      "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                     env, tmp_path, tmp_path / "models-serve.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/ping")
        body = {"dataframe_records": [{"prompt": "ROMEO:"}, {"prompt": "JULIET:"}],
                "params": {"max_new_tokens": 8, "seed": 3, "temperature": 0.0}}
        first = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert first.status_code == 200, first.text
        predictions = first.json()["predictions"]
        assert len(predictions) == 2 and all(isinstance(p["completion"], str)
                                             for p in predictions)
        again = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert again.json()["predictions"] == predictions
    finally:
        server.stop()


def test_completion_mode_needs_a_model_with_control_tokens(service):
    response = httpx.post(f"{service}/generate", json={**BASE, "mode": "completion"})
    assert response.status_code == 422
    assert "control tokens" in response.json()["detail"][0]["message"]


def test_completion_mode_wraps_the_prompt_and_stops_at_endoftext(registry, tmp_path):
    registry.register(seed=5, name="tinygpt-sft", fine_tuned=True)
    proc, url = start_service(registry.uri, tmp_path, "--model", "models:/tinygpt-sft@champion")
    try:
        wait_for(f"{url}/health")
        answer = httpx.post(f"{url}/generate", timeout=60, json={
            **BASE, "prompt": "2+2=", "mode": "completion", "max_new_tokens": 30}).json()
        assert answer["completion_tokens"] == 0 and answer["text"] == ""
        assert answer["prompt_tokens"] == len(registry.tokenizer.encode("2+2=")) + 2
        text_mode = httpx.post(f"{url}/generate", timeout=60, json={
            **BASE, "prompt": "2+2=", "mode": "text", "max_new_tokens": 30}).json()
        assert text_mode["prompt_tokens"] == answer["prompt_tokens"] - 2
        # 002's request, a prompt alone: a fine-tuned model answers it, under `code` too.
        plain = httpx.post(f"{url}/generate", timeout=60, json={"prompt": "2+2="}).json()
        assert plain["prompt_tokens"] == answer["prompt_tokens"] and plain["code"] == ""
    finally:
        proc.stop()


def test_a_fine_tuned_model_with_a_fallback_answers_with_the_closest_training_answer(
        registry, tmp_path):
    """The 002 write-up's fallback as served: this model always answers at once with
    <|endoftext|>, an empty (degenerate) answer, so every route answers with the training
    answer whose prompt is closest, and says so; the pyfunc does the same."""
    from registry import load_version

    fallback = Fallback(["add two numbers", "reverse a list"], ["a + b", "xs[::-1]"])
    version = registry.register(seed=6, name="tinygpt-fallback", fine_tuned=True,
                                fallback=fallback)
    proc, url = start_service(registry.uri, tmp_path, "--model",
                              "models:/tinygpt-fallback@champion")
    try:
        assert wait_for(f"{url}/health").json()["fallback"] is True
        whole = httpx.post(f"{url}/generate", timeout=60,
                           json={"prompt": "Reverse the list"}).json()
        assert (whole["text"], whole["code"], whole["fell_back"]) == (
            "xs[::-1]", "xs[::-1]", True)
        with httpx.stream("POST", f"{url}/generate-stream", timeout=60,
                          json={"prompt": "add the two numbers"}) as response:
            events = list(sse_events(response))
        assert [p["text"] for e, p in events if e == "piece"] == ["a + b"]
        assert events[-1][1]["fell_back"] is True
        openai = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "model": "tinygpt-fallback", "prompt": "reverse a list"}).json()
        assert openai["choices"][0]["text"] == "xs[::-1]"
        text_mode = httpx.post(f"{url}/generate", timeout=60, json={
            "prompt": "reverse a list", "mode": "text", "max_new_tokens": 4}).json()
        assert "fell_back" not in text_mode  # a continuation is never replaced
    finally:
        proc.stop()
    import mlflow
    mlflow.set_tracking_uri(registry.uri)
    pyfunc = load_version("tinygpt-fallback", version)
    assert pyfunc.predict(None, pd.DataFrame({"prompt": ["add two numbers"]}))[
        "completion"].tolist() == ["a + b"]


def test_several_models_are_served_and_chosen_per_request(registry, tmp_path):
    from gpt.tokenizer import WordTokenizer

    words_tokenizer = WordTokenizer.train("to be or not to be, that is the question:\n", 64)
    recipe = {"max_new_tokens": 3, "top_p": 0.95, "repetition_penalty": 1.2}  # its run's
    registry.register(seed=8, name="tinygpt-words", tokenizer=words_tokenizer, sampling=recipe)
    proc, url = start_service(registry.uri, tmp_path, "--model", "models:/tinygpt@champion",
                              "--model", "models:/tinygpt-words@champion")
    try:
        wait_for(f"{url}/health")
        listed = wait_for(f"{url}/models").json()["models"]
        assert [m["model"] for m in listed] == ["tinygpt", "tinygpt-words"]
        assert listed[1]["sampling"] == {**listed[0]["sampling"], **recipe}
        # What a request leaves out comes from the model's run; what it names, from it.
        short, longer = (httpx.post(f"{url}/generate", timeout=60, json={
            "model": "tinygpt-words", "prompt": "to be", "seed": 3, **extra}).json()
            for extra in ({}, {"max_new_tokens": 12}))
        assert short["completion_tokens"] <= 3 < longer["completion_tokens"]
        default = httpx.post(f"{url}/generate", timeout=60, json={**BASE, "max_new_tokens": 4})
        assert default.json()["model"] == "tinygpt" and "code" not in default.json()
        words = httpx.post(f"{url}/generate", timeout=60, json={
            **BASE, "model": "tinygpt-words", "prompt": "to be or not to be, hamlet",
            "max_new_tokens": 4}).json()
        assert words["model"] == "tinygpt-words"
        # 14 pieces: words, spaces and the comma; "hamlet", never seen, is one <|unk|>.
        assert words["prompt_tokens"] == len(words_tokenizer.encode("to be or not to be, hamlet"))
        assert words["prompt_tokens"] == 14
        # The context-length setting: the model attends to the last N tokens, prompt included.
        trimmed = httpx.post(f"{url}/generate", timeout=60, json={
            **BASE, "model": "tinygpt-words", "prompt": "to be or not to be, hamlet",
            "context_tokens": 3, "max_new_tokens": 4}).json()
        assert trimmed["prompt_tokens"] == 3
        unknown = httpx.post(f"{url}/generate", timeout=60, json={**BASE, "model": "gpt5"})
        assert unknown.status_code == 422
        [problem] = unknown.json()["detail"]
        assert problem["field"] == "model" and "tinygpt, tinygpt-words" in problem["message"]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'tinygpt_model_version{model="tinygpt-words"}' in metrics
    finally:
        proc.stop()


def test_a_character_the_tokenizer_never_saw_is_a_422_naming_the_prompt(registry, tmp_path):
    from gpt.tokenizer import CharTokenizer

    registry.register(seed=6, name="tinygpt-char",
                      tokenizer=CharTokenizer.train("to be or not to be, ROMEO:\n"))
    proc, url = start_service(registry.uri, tmp_path, "--model", "models:/tinygpt-char@champion")
    try:
        wait_for(f"{url}/health")
        response = httpx.post(f"{url}/generate", timeout=60, json={**BASE, "prompt": "ROMEO€"})
        assert response.status_code == 422
        [problem] = response.json()["detail"]
        assert problem["field"] == "prompt" and "'€'" in problem["message"], problem
    finally:
        proc.stop()


def test_cors_is_off_by_default_and_on_for_a_named_origin(service, registry, tmp_path):
    preflight = {"Origin": "http://front.example", "Access-Control-Request-Method": "POST"}
    closed = httpx.options(f"{service}/generate", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    proc, url = start_service(registry.uri, tmp_path, "--cors-origin", "http://front.example")
    try:
        wait_for(f"{url}/health")
        opened = httpx.options(f"{url}/generate", headers=preflight)
        assert opened.headers["access-control-allow-origin"] == "http://front.example"
        other = httpx.options(f"{url}/generate", headers={**preflight,
                                                          "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        proc.stop()


def test_a_checkpoint_folder_is_served_without_a_registry(registry, tmp_path):
    folder = registry.root / "ckpt-tinygpt-0"  # what the registry fixture registered as v1
    proc, url = start_service("sqlite:///nowhere.db", tmp_path, "--model", str(folder))
    try:
        health = wait_for(f"{url}/health").json()
        assert health["model"] == str(folder) and health["version"] == "local"
        answer = httpx.post(f"{url}/generate", timeout=60, json={**BASE, "max_new_tokens": 5})
        assert answer.status_code == 200 and answer.json()["completion_tokens"] > 0
        assert httpx.get(f"{url}/metrics").status_code == 200
    finally:
        proc.stop()


def test_a_compiled_service_compiles_as_it_loads_and_answers_as_eager_decoding(registry,
                                                                              tmp_path):
    from gpt.checkpoint import load_model
    from gpt.generate import SamplingParams, generate_text
    from gpt.quantize import for_decoding
    from gpt.tokenizer import load_tokenizer

    folder = registry.root / "ckpt-tinygpt-0"
    proc, url = start_service("sqlite:///nowhere.db", tmp_path, "--model", str(folder),
                              "--weights", "fp32", "--compile")
    greedy = {"prompt": "ROMEO:", "max_new_tokens": 24, "temperature": 0}
    try:
        health = wait_for(f"{url}/health").json()
        assert health["compiled"] is True  # compiled while loading, and did not fall back
        answer = httpx.post(f"{url}/generate", json=greedy, timeout=60).json()
    finally:
        proc.stop()
    eager = for_decoding(load_model(folder), "fp32")
    expected = generate_text(eager, load_tokenizer(folder), "ROMEO:",
                             SamplingParams(max_new_tokens=24, temperature=0))
    assert answer["text"] == expected and answer["completion_tokens"] == 24


def test_sigterm_stops_the_service_cleanly(registry, tmp_path):
    """What a service manager sends: the lifespan's shutdown runs, the port is released. (uvicorn
    re-raises the signal once it has shut down, so the status says SIGTERM, as systemd expects.)"""
    import signal

    proc, url = start_service(registry.uri, tmp_path)
    try:
        wait_for(f"{url}/health")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        proc.stop()
    assert "Application shutdown complete" in Path(proc.log.name).read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)
