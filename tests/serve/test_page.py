"""The playground page in a real browser: Debian's Chromium, driven by Playwright."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from gpt.config import SamplingParams
from tests.scratch import ROOT
from tests.serve.conftest import BIN, embedded_service, start_service, wait_for

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page_service(registry, prefect_harness, tmp_path_factory) -> Iterator[str]:
    """The service, with a Prefect API that has the on-demand retraining deployment."""
    from prefect.settings import PREFECT_API_URL

    from flows.retrain import retrain

    retrain.to_deployment(name="on-demand").apply()
    cwd = tmp_path_factory.mktemp("page")
    os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
    try:
        proc, url = start_service(registry.uri, cwd)
    finally:
        del os.environ["PREFECT_API_URL"]
    try:
        wait_for(f"{url}/health")
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser_page(page_service):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{page_service}/")
        yield page
        browser.close()


def test_page_streams_a_generation_with_the_chosen_settings(browser_page, artifacts_dir):
    page = browser_page
    expect(page.locator("#model")).to_contain_text("model tinygpt version")
    expect(page.locator("#model-choice")).to_be_hidden()  # one model: nothing to choose
    defaults = SamplingParams()  # the sliders start from the service's defaults
    expect(page.locator("#max_new_tokens-value")).to_have_text(str(defaults.max_new_tokens))
    expect(page.locator("#temperature-value")).to_have_text(str(defaults.temperature))
    page.locator("#temperature").fill("0.5")
    expect(page.locator("#temperature-value")).to_have_text("0.5")
    page.locator("#max_new_tokens").fill("120")
    page.fill("#prompt", "JULIET:")
    page.evaluate("""() => {
        window.updates = 0;
        // Count records, not callbacks: pieces read in one network chunk share a callback.
        new MutationObserver((records) => { window.updates += records.length; }).observe(
            document.getElementById('output'), {childList: true, characterData: true,
                                                subtree: true});
    }""")
    page.click("#generate")
    # A random-weight model may end early at <|endoftext|>; any count up to 120 is fine.
    expect(page.locator("#stats")).to_contain_text(re.compile(r"\d+ tokens in"), timeout=60_000)
    output = page.locator("#output").inner_text()
    assert output.startswith("JULIET:") and len(output) > len("JULIET:")
    assert page.evaluate("window.updates") > 2  # the text was drawn piece by piece, as streamed
    page.screenshot(path=str(artifacts_dir / "playground.png"), full_page=True)


def test_the_page_chooses_among_served_models_and_trims_the_context(browser_page, registry,
                                                                   tmp_path):
    from gpt.tokenizer import WordTokenizer

    registry.register(seed=9, name="page-words", tokenizer=WordTokenizer.train(
        "to be or not to be, that is the question:\n", 64),
        sampling={"max_new_tokens": 20, "top_p": 0.95, "repetition_penalty": 1.2})
    proc, url = start_service(registry.uri, tmp_path, "--model", "models:/tinygpt@champion",
                              "--model", "models:/page-words@champion")
    try:
        wait_for(f"{url}/health")
        page = browser_page.context.browser.new_page()
        try:
            page.goto(f"{url}/")
            expect(page.locator("#model-choice")).to_be_visible()
            page.select_option("#model-select", "page-words")
            expect(page.locator("#model")).to_contain_text("model page-words version")
            for slider, value in (("max_new_tokens", "20"), ("top_p", "0.95"),
                                  ("repetition_penalty", "1.2")):  # its run's choice
                expect(page.locator(f"#{slider}-value")).to_have_text(value)
            expect(page.locator("#context_tokens")).to_have_attribute("max", "64")  # its block
            page.locator("#context_tokens").fill("3")
            page.fill("#prompt", "to be or not to be")
            with page.expect_request("**/generate/stream") as sent:
                page.click("#generate")
            assert sent.value.post_data_json["model"] == "page-words"
            assert sent.value.post_data_json["context_tokens"] == 3
            expect(page.locator("#stats")).to_contain_text("page-words version",
                                                           timeout=60_000)
        finally:
            page.close()
    finally:
        proc.stop()


def build_vocabulary(page, url: str, corpus: str, vocab_size: int) -> str:
    """Open the page, record every text #corpus-status shows (window.statuses), upload corpus
    and build its BPE vocabulary; the vocabulary step's text."""
    page.goto(f"{url}/")
    page.evaluate("""() => {
        window.statuses = [];
        const status = document.getElementById('corpus-status');
        new MutationObserver(() => window.statuses.push(status.textContent)).observe(
            status, {childList: true, characterData: true, subtree: true});
    }""")
    page.set_input_files("#corpus", files=[{"name": "sonnets.txt", "mimeType": "text/plain",
                                            "buffer": corpus.encode()}])
    page.fill("#vocab-size", str(vocab_size))
    page.click("#vocabulary")
    vocabulary = page.locator("#vocab-status")
    expect(vocabulary).to_contain_text(f"bpe vocabulary of {vocab_size} tokens", timeout=60_000)
    return vocabulary.inner_text()


def test_bad_upload_shows_the_validation_errors(browser_page):
    page = browser_page
    page.set_input_files("#corpus", files=[{"name": "../../etc/evil.jsonl",
                                            "mimeType": "text/plain",
                                            "buffer": b'{"text": 5}\n'}])
    page.click("#vocabulary")
    status = page.locator("#vocab-status")
    expect(status).to_contain_text("validation failed", timeout=60_000)
    expect(status).to_contain_text("'text' must be a string")
    expect(page.locator("#train")).to_be_disabled()


def test_the_chain_sends_its_run_to_the_deployment_with_the_vocabulary_built(
        browser_page, artifacts_dir):
    """With a Prefect API: the vocabulary step shows its size and first tokens, and the run
    it starts on the deployment carries the same tokenizer settings (no worker here: it stays
    Scheduled; tests/stack runs one to the end)."""
    from prefect.client.orchestration import get_client

    page = browser_page
    text = "".join(f"Paragraph {i}: the quick brown fox.\n\n" for i in range(50)).encode()
    page.set_input_files("#corpus", files=[{"name": "my corpus.txt", "mimeType": "text/plain",
                                            "buffer": text}])
    page.select_option("#tokenizer-kind", "char")
    page.fill("#vocab-size", "64")
    page.click("#vocabulary")
    vocabulary = page.locator("#vocab-status")
    expect(vocabulary).to_contain_text("char vocabulary of", timeout=60_000)
    expect(vocabulary).to_contain_text('"P" "a" "r" "a"')
    page.fill("#train-steps", "12")
    page.click("#train")
    status = page.locator("#corpus-status")
    expect(status).to_contain_text("retraining run", timeout=60_000)
    expect(status).to_contain_text("Scheduled")
    page.screenshot(path=str(artifacts_dir / "playground-upload.png"), full_page=True)
    run_id = status.inner_text().split("retraining run ")[1].split(":")[0]
    with get_client(sync_client=True) as prefect:  # Playwright's loop runs in this thread
        sent = prefect.read_flow_run(run_id).parameters
    assert sent["overrides"][-3:] == ["tokenizer.kind=char", "tokenizer.vocab_size=64",
                                      "train.max_steps=12"]
    assert Path(sent["source"]).name.endswith("-my_corpus.txt")
    assert Path(sent["source"]).is_absolute()  # the worker runs in a folder of its own


def test_the_chain_runs_embedded_with_nothing_started_but_the_service(browser_page, shakespeare,
                                                                     tmp_path, artifacts_dir):
    """The 000 write-up's page with `tinygpt serve` alone (no Prefect API, no model yet):
    upload, build the vocabulary, train with progress shown (`tinygpt retrain` in the service's
    project, embedded), then generate from the new champion once it is served. The registered
    version's tokenizer is the vocabulary the page showed."""
    from mlflow import MlflowClient

    _, store, proc, url = embedded_service(tmp_path, shakespeare[:40_000])
    try:
        page = browser_page.context.browser.new_page(viewport={"width": 1100, "height": 900})
        try:
            shown = build_vocabulary(page, url, shakespeare[40_000:80_000], 300)
            shown_digest = re.search(r"digest (\w{12})", shown).group(1)
            page.fill("#train-steps", "20")
            page.click("#train")
            status = page.locator("#corpus-status")
            expect(status).to_contain_text("Completed", timeout=300_000)
            expect(status).to_contain_text("tinygpt version 1, now champion")
            expect(status).to_contain_text("served now", timeout=60_000)
            expect(page.locator("#model")).to_contain_text("model tinygpt version 1")
            page.fill("#prompt", "Shall I")
            page.click("#generate")
            expect(page.locator("#stats")).to_contain_text("tinygpt version 1", timeout=60_000)
            page.screenshot(path=str(artifacts_dir / "playground-embedded-chain.png"),
                            full_page=True)
            statuses = page.evaluate("window.statuses")
        finally:
            page.close()
    finally:
        proc.stop()
    progress = {s.split(" \u2014 ")[-1] for s in statuses if "Running \u2014 step " in s}
    assert len(progress) >= 2, statuses  # the line moved on while the run went
    tags = MlflowClient(store, store).get_model_version("tinygpt", "1").tags
    assert tags["tokenizer_digest"].startswith(shown_digest)


@pytest.mark.parametrize(("path", "shown"), [("/docs", ".swagger-ui .info .title"),
                                             ("/redoc", "h1")])
def test_api_docs_render_with_the_network_blocked(browser_page, page_service, artifacts_dir,
                                                  path, shown):
    """Swagger UI and ReDoc load their scripts and styles from the service, not a CDN (ReDoc's
    footer still asks redoc.ly for its logo, an image the page renders without)."""
    elsewhere = []
    page = browser_page.context.browser.new_page(viewport={"width": 1100, "height": 900})
    try:
        def only_the_service(route):
            if route.request.url.startswith(page_service):
                return route.continue_()
            if route.request.resource_type != "image":
                elsewhere.append(route.request.url)
            return route.abort()

        page.route("**/*", only_the_service)
        page.goto(f"{page_service}{path}")
        expect(page.locator(shown).first).to_contain_text("tinygpt", timeout=30_000)
        expect(page.get_by_text("/generate/stream").first).to_be_visible()
        page.screenshot(path=str(artifacts_dir / f"offline-{path.strip('/')}.png"))
    finally:
        page.close()
    assert elsewhere == []


@contextmanager
def offline_page(browser_page, width: int = 1100) -> Iterator[tuple]:
    """A page that may load file:// URLs only; yields it with the lists of what it asked for
    elsewhere (aborted) and of local files that failed to load. Both must stay empty."""
    elsewhere, failed = [], []
    page = browser_page.context.browser.new_page(viewport={"width": width, "height": 800})

    def offline(route):
        if route.request.url.startswith("file://"):
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort()

    page.route("**/*", offline)
    page.on("requestfailed", lambda request: failed.append((request.url, request.failure)))
    try:
        yield page, elsewhere, failed
    finally:
        page.close()


@pytest.fixture(scope="module")
def validated(tmp_path_factory) -> Path:
    """A folder whose reports/ holds validation.html and a Data Docs site."""
    from tests.data.test_validate import run

    folder = tmp_path_factory.mktemp("validated")
    run(folder, [{"doc_id": "a", "text": "hello"}, {"doc_id": "b", "text": "world"}])
    return folder / "reports"


def test_the_validation_report_renders_with_the_network_blocked(browser_page, validated,
                                                                artifacts_dir):
    with offline_page(browser_page) as (page, elsewhere, failed):
        page.goto((validated / "validation.html").as_uri())
        expect(page.locator("h1")).to_have_text("Data validation passed")
        expect(page.locator("td.ok").first).to_be_visible()
        assert page.locator("td.ok").count() >= 10
        page.screenshot(path=str(artifacts_dir / "offline-validation.png"))
    assert elsewhere == failed == []


def test_data_docs_render_styled_with_the_network_blocked(browser_page, validated,
                                                         artifacts_dir):
    """Great Expectations' own site: Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega
    come from copies inside the site (tasks/web_assets.py), not from CDNs."""
    site = validated / "data_docs"
    result_page = next((site / "validations").rglob("*.html"))
    with offline_page(browser_page) as (page, elsewhere, failed):
        page.goto((site / "index.html").as_uri())
        expect(page.locator(".bootstrap-table").first).to_be_visible()  # drawn by its script
        assert page.evaluate("getComputedStyle(document.querySelector('.navbar')).display") \
            == "flex"  # Bootstrap's stylesheet applied
        assert page.evaluate("typeof vegaEmbed") == "function"
        page.screenshot(path=str(artifacts_dir / "offline-data-docs.png"))
        page.goto(result_page.as_uri())
        expect(page.get_by_text("corpus").first).to_be_visible()
        expect(page.locator(".fa-check-circle, .fa-circle-check").first).to_be_visible()
        assert page.evaluate("document.fonts.ready.then(() => document.fonts.check("
                             "'900 16px \"Font Awesome 6 Free\"'))")
        page.screenshot(path=str(artifacts_dir / "offline-data-docs-result.png"), full_page=True)
    assert elsewhere == failed == []


def test_dvc_plots_render_with_the_network_blocked(browser_page, tmp_path, artifacts_dir):
    """`dvc plots show` in the checkout fills the template .dvc/config names, Vega inline."""
    done = subprocess.run([str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "plots")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with offline_page(browser_page) as (page, elsewhere, failed):
        page.goto((tmp_path / "plots" / "index.html").as_uri())
        expect(page.locator(".vega-embed canvas, .vega-embed svg").first).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "offline-dvc-plots.png"), full_page=True)
    assert elsewhere == failed == []
