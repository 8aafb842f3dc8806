"""`tinygpt`: the one command line. Parses arguments and calls the layers below."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from gpt.config import DATA_KINDS, WEIGHT_FORMATS, Params, SampleConfig
from gpt.tokenizer import TOKENIZER_KINDS
from serve.settings import Settings
from stack import apply_env
from stack.environment import embedded_defaults
from stack.remote import ensure_remote
from stack.services import WORKER_LIMIT
from tasks.kinds import DEFAULT_KIND, KINDS
from tasks.workspace import DEFAULT_ROOT as DEFAULT_WORKSPACES

ERROR_LOG = Path(".tinygpt") / "last-error.log"
DESCRIPTION = ("Train, evaluate, version, register and serve a small GPT, from a corpus to a "
               "served model. `make run` runs the whole pipeline; `tinygpt COMMAND --help` "
               "shows a command's options and an example.")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

PREFECT_UI_PORT = 4200  # `tinygpt ui prefect`'s (MLflow's is registry.MLFLOW_UI_PORT)
SERVE = Settings()  # `tinygpt serve`'s option defaults
BIN = Path(sys.executable).parent  # the venv's tools: mlflow, prefect, dvc, tinygpt
RECIPE_HELP = ("lay recipes/NAME.yaml over params.yaml, under --set (`tinygpt recipes` "
               "lists them)")


class Parser(argparse.ArgumentParser):
    """argparse with a user's view: each option's default in --help, and "did you mean" for a
    misspelt command or choice."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if wrong:
            choices = re.findall(r"'([^']*)'", wrong.group(2))
            close = difflib.get_close_matches(wrong.group(1), choices, n=1)
            if close:
                message = (f"{message[:wrong.start()]}invalid choice: {wrong.group(1)!r}; did "
                           f"you mean {close[0]}?")
        super().error(message)


class DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help where X says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """The sample section's settings; each unset one keeps params.yaml's value."""
    declared = SampleConfig()

    def default(key: str) -> str:
        return f" (default: params.yaml's sample.{key}, {getattr(declared, key)})"

    parser.add_argument("--max-new-tokens", type=int,
                        help="tokens to generate at most" + default("max_new_tokens"))
    parser.add_argument("--temperature", type=float,
                        help="0 is greedy; higher is more varied" + default("temperature"))
    parser.add_argument("--top-k", type=int,
                        help="sample among the k most likely tokens" + default("top_k"))
    parser.add_argument("--top-p", type=float,
                        help="sample among the fewest tokens whose probability reaches p"
                             + default("top_p"))
    parser.add_argument("--repetition-penalty", type=float,
                        help="> 1 makes tokens already in the context less likely"
                             + default("repetition_penalty"))
    parser.add_argument("--seed", type=int,
                        help="same seed and settings, same text" + default("seed"))


def _add_params_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, help="parameter file (default: ./params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a parameter, e.g. train.max_steps=200")


def tokenizer_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="a UTF-8 text file")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="the vocabulary's size; for word and regex, a cap")
    parser.add_argument("--kind", choices=list(TOKENIZER_KINDS), default="bpe",
                        help="byte-level BPE (default), characters, or word-level")
    parser.add_argument("--min-frequency", type=int, default=1,
                        help="word and regex: rarer pieces become <|unk|>")
    parser.add_argument("--drop-whitespace", action="store_true",
                        help="regex: whitespace is no token (the 004 book's tokenizer)")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the tokenizer's files")


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    import time

    from gpt.data import read_text
    from gpt.tokenizer import train_tokenizer

    text = read_text(args.input)
    started = time.perf_counter()
    tokenizer = train_tokenizer(args.kind, text, args.vocab_size,
                                min_frequency=args.min_frequency,
                                drop_whitespace=args.drop_whitespace)
    tokenizer.save(args.out)
    print(f"trained {args.kind} tokenizer, vocab {tokenizer.vocab_size}, in "
          f"{time.perf_counter() - started:.2f}s -> {args.out}")


def train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="a UTF-8 text file")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for checkpoints, tokenizer and metrics.json")


def cmd_train(args: argparse.Namespace) -> None:
    from gpt.config import load_params
    from gpt.quick import train_from_text

    metrics = train_from_text(args.input, args.out, load_params(args.params, args.overrides))
    print(f"val loss {metrics['val_loss']:.4f} | perplexity {metrics['val_perplexity']:.2f} | "
          f"bits/byte {metrics['val_bits_per_byte']:.4f} | {metrics['steps']} steps in "
          f"{metrics['wall_seconds']:.0f}s | {metrics['tokens_per_s']:.0f} tok/s")
    print(f"checkpoint: {args.out / 'best'}")
    print("sample:\n" + metrics["sample"])


def generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint folder, or a run folder holding best/")
    _add_sampling_options(parser)
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default="auto",
                        help="decode with the weights in this format (gpt/quantize.py; "
                             "auto: int8 on a CPU)")
    parser.add_argument("--stats", action="store_true",
                        help="end with the decode rate and the weights' size")


def cmd_generate(args: argparse.Namespace) -> None:
    from gpt.checkpoint import load_model, resolve_checkpoint
    from gpt.config import load_params
    from gpt.generate import DecodeClock, stream_text
    from gpt.quantize import for_decoding, pick_weights, weight_bytes_per_token
    from gpt.tokenizer import load_tokenizer

    folder = resolve_checkpoint(args.checkpoint)
    model = for_decoding(load_model(folder), args.weights)
    tokenizer = load_tokenizer(folder)
    params = load_params().sample.sampling(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    clock = DecodeClock()
    sys.stdout.write(args.prompt)
    for piece in stream_text(model, tokenizer, args.prompt, params, clock):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        megabytes = weight_bytes_per_token(model) / 1e6
        weights = pick_weights(args.weights, next(model.parameters()).device)
        print(f"decode: {clock.tokens_per_s:.1f} tok/s (weights {weights}, "
              f"{megabytes:.1f} MB)")


def export_hf_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint folder, or a run folder holding best/")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for config.json, model.safetensors and tokenizer files")


def cmd_export_hf(args: argparse.Namespace) -> None:
    from gpt.export import export_hf

    out = export_hf(args.checkpoint, args.out)
    architecture = json.loads((out / "config.json").read_text())["architectures"][0]
    print(f"wrote a Hugging Face {architecture} folder: {out}")


def finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force-promote", action="store_true",
                        help="move the champion alias even if the new model is worse")
    parser.add_argument("--fresh", action="store_true",
                        help="start training over instead of resuming an interrupted run")
    parser.add_argument("--recipe", help=RECIPE_HELP)
    parser.add_argument("--summary-json", type=Path, metavar="PATH",
                        help="also write the run's summary as JSON (for scripts)")


def cmd_finetune(args: argparse.Namespace) -> None:
    """`tinygpt finetune` is `tinygpt retrain --set data.kind=sft`."""
    args.overrides = [*args.overrides, "data.kind=sft"]
    args.source = None
    cmd_retrain(args)


def print_summary(summary: dict) -> None:
    print(f"\nmodel {summary['model']} version {summary['version']} "
          f"({'now champion' if summary['promoted'] else 'candidate, not promoted'}; "
          f"champion is version {summary['champion']})")
    print(f"promotion: {summary['promotion']}")
    for line in KINDS[summary["kind"]].summary_lines(summary):
        print(line)
    if drift := summary["drift"]:
        print(f"data drift from champion v{drift['drift_champion_version']:.0f}: byte "
              f"divergence {drift['drift_js_divergence']:.4f} bits, "
              f"{drift['drift_unseen_chars']:.2%} unseen characters, "
              f"{drift.get('drift_tokens_per_byte_ratio', float('nan')):.2f}x its tokens "
              f"per byte")
    steps = ", ".join(f"{k} {v:.1f}s{' (cached)' if k in summary['cached'] else ''}"
                      for k, v in summary["seconds"].items())
    print(f"steps: {steps}")
    if summary["sample"]:
        print(f"sample:\n{summary['sample']}")
    from registry import MLFLOW_UI_PORT, ui_base, ui_links

    served = summary["tracking_uri"].startswith(("http://", "https://"))  # a team stack
    ui = ui_base(summary["tracking_uri"])
    links = ui_links(ui, summary["experiment_id"], summary["run_id"], summary["model"],
                     summary["version"])
    if served:
        prefect_ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
        print(f"open the UIs: MLflow {ui}, Prefect {prefect_ui}")
    else:
        tinygpt = os.path.relpath(BIN / "tinygpt")
        print(f"open the UIs: `{tinygpt} ui mlflow` (http://127.0.0.1:{MLFLOW_UI_PORT}), "
              f"`{tinygpt} ui prefect` (http://127.0.0.1:{PREFECT_UI_PORT})")
    for what, url in links.items():
        print(f"  {what:<8}{url}")


def retrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="corpus path or URL (default: data.source)")
    finetune_arguments(parser)


def cmd_retrain(args: argparse.Namespace) -> None:
    """Check the parameters and take the project's run lock before Prefect starts, so a
    second run stops at once; an interrupted run ends with one line and exit 1."""
    from gpt.config import load_params, recipe_overrides
    from tasks.lock import run_lock

    recipe = recipe_overrides(args.recipe) if args.recipe else []
    params = load_params(args.params, [*recipe, *args.overrides])
    with run_lock():
        from prefect.exceptions import CancelledRun

        from flows.retrain import preflight, retrain
        from stack.embedded import prefect_api

        with prefect_api():
            preflight(params)
            try:
                summary = retrain(overrides=args.overrides,
                                  params_file=args.params and str(args.params),
                                  source=args.source, force_promote=args.force_promote,
                                  fresh=args.fresh, recipe=args.recipe)
            except CancelledRun as err:
                raise RuntimeError(f"{err}. Run the same command again to resume training "
                                   f"(--fresh starts over)") from None
            except Exception as err:
                lost = server_lost(err)
                if lost is None:
                    raise
                down = servers_down(params)
                line = f"{down}; the run stopped, nothing was promoted" if down else str(lost)
                if down.startswith("the Prefect server"):
                    exit_now(line)
                raise RuntimeError(line) from None
    print_summary(summary)
    if args.summary_json:
        from gpt.files import write_json

        write_json(args.summary_json, summary)


def exit_now(message: str) -> NoReturn:
    """The error line, then exit without Prefect's exit hooks: with its server (or its
    database) gone, they would retry sending the run's last logs and events for half a
    minute, to nobody."""
    sys.stdout.flush()
    print(f"\ntinygpt: error: {message}", file=sys.stderr, flush=True)  # after their noise
    os._exit(1)


def servers_down(params: Params) -> str:
    """After a run lost a server: what is down now, in one line (Prefect's verdict first: its
    `/ready` names a database both servers lost), or '' when both answer again."""
    from flows.retrain import PrefectUnavailable, check_prefect_api
    from registry import RegistryUnavailable, check_reachable

    try:
        check_prefect_api(timeout=3.0)
        check_reachable(params, timeout=3.0)
    except (PrefectUnavailable, RegistryUnavailable) as err:
        return str(err)
    return ""


def server_lost(err: BaseException) -> Exception | None:
    """The lost server behind a failed run, if that is why it failed: Prefect's client, whose
    call failed next, would otherwise have the last word."""
    from flows.retrain import PrefectUnavailable
    from registry import RegistryUnavailable

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, PrefectUnavailable | RegistryUnavailable):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a text file, a folder of them, or a JSONL file")
    parser.add_argument("--kind", choices=DATA_KINDS, default=DEFAULT_KIND,
                        help="text corpus (default) or prompt/completion JSONL")


def cmd_validate(args: argparse.Namespace) -> int:
    """ingest + validate a file with the suite of its kind, in a scratch folder."""
    from gpt.config import load_params, with_paths
    from tasks.ingest import ingest
    from tasks.validate import DataValidationError, validate

    overrides = [*args.overrides, f"data.kind={args.kind}"]
    with tempfile.TemporaryDirectory() as scratch:
        params = with_paths(load_params(args.params, overrides), raw=f"{scratch}/raw",
                            validated=f"{scratch}/validated",
                            reports=str(Path("reports") / "validate"))
        try:
            ingested = ingest(params, args.path)
            result = validate(params)
        except DataValidationError as err:
            print(f"tinygpt: validation failed: {err}", file=sys.stderr)
            return 1
    print(f"{args.path}: valid ({ingested['rows']} records, {result['expectations']} "
          f"expectations met); report: {result['report']}")
    return 0


def registry_params(args: argparse.Namespace) -> Params:
    """The run's parameters, once their MLflow server (if the store is one) answers: a server
    that is down is one line at once, not minutes of the client's retries."""
    from gpt.config import load_params
    from registry import check_reachable

    params = load_params(args.params, args.overrides)
    check_reachable(params)
    return params


def promote_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="a version number or an alias")
    which.add_argument("--rollback", action="store_true",
                       help="move champion back to the version it replaced")
    parser.add_argument("--force", action="store_true",
                        help="promote even if it does not beat the champion")


def cmd_promote(args: argparse.Namespace) -> None:
    from registry import check_version_exists
    from tasks.lock import run_lock

    with run_lock():  # before the seconds of imports below: a busy project says so at once
        params = registry_params(args)
        if args.version:
            check_version_exists(params, args.version)  # so does a local store without it
        from tasks.promote import promote, rollback

        if args.rollback:
            done = rollback(params)
            print(f"champion rolled back from version {done['previous_champion']} to "
                  f"version {done['champion']}")
            return
        decision = promote(params, args.version, args.force)
    print(f"version {decision['version']}: "
          f"{'promoted' if decision['promoted'] else 'not promoted'} "
          f"({decision['reason']}); champion is version {decision['champion']}")


def cmd_recipes(_args: argparse.Namespace) -> None:
    from gpt.config import list_recipes

    for name, summary in list_recipes().items():
        print(f"{name:<18} {summary}")
    print("run one: tinygpt retrain --recipe NAME [--set key=value ...] (finetune for sft ones)")


def history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="registered model name (default: the kind's)")
    parser.add_argument("--alias", help="only this alias (e.g. champion)")


def cmd_history(args: argparse.Namespace) -> None:
    from registry import alias_history, store_name

    params = registry_params(args)
    moves = alias_history(params, args.model or params.model_name, args.alias)
    print(f"alias moves recorded in {store_name(params)}")
    if not moves:
        print(f"no recorded alias moves for {args.model or params.model_name}")
        return
    print(f"{'when (UTC)':<19}  {'model':<12} {'alias':<10} {'from':>4} -> {'to':<4} "
          f"{'by':<38} why")
    for move in moves:
        print(f"{move['when']:<19}  {move['model']:<12} {move['alias']:<10} "
              f"{move['from_version'].replace('none', '-'):>4} -> {move['to_version']:<4} "
              f"{move['by'][:38]:<38} {move['reason']}")


def reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", required=True, help="a version number or an alias")
    parser.add_argument("--retrain", action="store_true",
                        help="then train again on the restored data and compare weights")


def cmd_reproduce(args: argparse.Namespace) -> None:
    from registry import check_version_exists

    params = registry_params(args)
    check_version_exists(params, args.version)  # a local store answers before the imports
    from tasks.lock import run_lock
    from tasks.reproduce import reproduce, retrain_and_compare

    with run_lock():
        restored = reproduce(params, args.version)
        for path, digest in restored["files"]:
            print(f"{digest}  {path}")
        print(f"restored the data, tokenizer and weights of version {restored['version']} "
              f"(dvc.lock {restored['dvc_lock_digest'][:12]}); every file above equals the "
              f"registered artifact. Its code is git commit {restored['git_commit']}")
        if args.retrain:
            print("training again on the restored data with the version's parameters ...",
                  flush=True)
            done = retrain_and_compare(params, restored["version"],
                                       args.params and str(args.params))
    if args.retrain:
        same = ("bit-identical weights" if done["identical"] else
                f"weights differ by at most {done['max_abs_difference']:.3g}")
        metric = done["metric"]
        print(f"retrained: {same} ({done['threads']} threads); {metric} "
              f"{done[f'registered_{metric}']:.6f} registered, "
              f"{done[f'retrained_{metric}']:.6f} retrained")


def cmd_pull(_args: argparse.Namespace) -> None:
    from tasks.workspace import pull

    stages = pull()
    print(f"pulled what dvc.lock records for {', '.join(stages)}" if stages
          else "dvc.lock records no stage: nothing to pull")


def gc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--apply", action="store_true", help="delete and close, not just list")


def cmd_gc(args: argparse.Namespace) -> None:
    from tasks.gc import gc
    from tasks.lock import run_lock

    params = registry_params(args)
    with run_lock():
        found = gc(params, apply=args.apply)
    for what, lines in found.items():
        print(f"{what}: {len(lines) or 'none'}")
        for line in lines:
            print(f"  {line}")
    if not args.apply and any(found.values()):
        print("dry run: nothing changed; `tinygpt gc --apply` removes and closes these")


def serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--model", action="append", default=[], dest="models",
                        help="registry URI (default: models:/<registry.model_name>@champion) "
                             "or a checkpoint folder (tinygpt train's output); repeat it to "
                             "serve several, the first being the default")
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default=SERVE.weights,
                        help="decode with the weights in this format (auto: int8 on a CPU)")
    parser.add_argument("--compile", action="store_true", default=SERVE.compile,
                        help="decode through a torch.compile'd step, compiled as each model "
                             "loads (seconds); faster per token (bench/generate.py)")
    parser.add_argument("--poll-seconds", type=float, default=SERVE.poll_seconds,
                        help="how often to check whether the alias moved")
    parser.add_argument("--max-concurrency", type=int, default=SERVE.max_concurrency,
                        help="generations running at once")
    parser.add_argument("--max-queue", type=int, default=SERVE.max_queue,
                        help="requests waiting for a slot before 429")
    parser.add_argument("--upload-folder-mb", type=int,
                        default=SERVE.max_upload_dir_bytes >> 20,
                        help="accepted uploads (each a run's data) stay in uploads/ up to this "
                             "total; past it, an upload gets a 413")
    parser.add_argument("--cors-origin", action="append", default=[], dest="cors_origins",
                        help="an origin (https://host:port) whose pages may call the API; "
                             "repeatable; none by default")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from gpt.config import load_params
    from registry import use_store
    from serve.app import create_app

    params = load_params(args.params, args.overrides)
    from stack.processes import port_open

    if port_open(args.port, host=args.host):
        raise OSError(f"port {args.port} is taken on {args.host}: stop what uses it or pick "
                      f"another with --port")
    use_store(params)  # only set, not contacted: the service waits for the registry
    uris = tuple(args.models) or (
        f"models:/{params.model_name}@{params.registry.champion_alias}",)
    app = create_app(Settings(model_uris=uris, weights=args.weights, compile=args.compile,
                              poll_seconds=args.poll_seconds,
                              max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                              max_upload_dir_bytes=args.upload_folder_mb * 2**20,
                              cors_origins=tuple(args.cors_origins)))
    print(f"serving {', '.join(uris)} on http://{args.host}:{args.port}/")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinygpt")
    except PackageNotFoundError:  # run from a checkout without `make setup`
        return "(not installed)"


def project_environment(params_file: Path | None = None) -> dict[str, str]:
    """The variables the project's tools need here: the venv's bin first on PATH, the embedded
    defaults, the data mirror beside the checkout (as the Makefile sets it), the MLflow store of
    params.yaml as an absolute URI, and a team stack's variables when one is up. Values already
    in the environment win."""
    from gpt.config import load_params
    from registry import tracking_uri
    from stack import read_env

    values = embedded_defaults()
    values["MLFLOW_TRACKING_URI"] = tracking_uri(load_params(params_file))
    values.update(read_env())
    values.update({key: os.environ[key] for key in values if key in os.environ})
    path = os.environ.get("PATH", "")
    values["PATH"] = path if str(BIN) in path.split(os.pathsep) else f"{BIN}:{path}"
    return values


def worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", default="tinygpt", help="the work pool (prefect.yaml's)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORKSPACES,
                        help="where its runs' workspaces go (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=WORKER_LIMIT,
                        help="the most runs at once on this host (default: %(default)s; a run "
                             "uses every core)")


def cmd_worker(args: argparse.Namespace) -> int:
    """The worker as a child in its own session: a stop request (SIGTERM from a service
    manager, or Ctrl-C) reaches it once, as the SIGINT it shuts down cleanly on."""
    import signal
    import subprocess

    from stack.processes import default_sigint
    from stack.services import worker_environment

    env = {**os.environ, **project_environment(args.params),
           **worker_environment(args.work_dir)}
    if not env.get("PREFECT_API_URL"):
        raise RuntimeError("a worker needs a Prefect server: `tinygpt stack up` starts one "
                           "with a worker, or run `tinygpt ui prefect` and export "
                           "PREFECT_API_URL=http://127.0.0.1:4200/api")
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", args.pool,
                               "--type", "process", "--limit", str(args.limit)], env=env,
                              start_new_session=True, preexec_fn=default_sigint)
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: worker.send_signal(signal.SIGINT))
    return worker.wait()


def cmd_status(args: argparse.Namespace) -> None:
    from stack.embedded import stray_lines
    from stack.envfile import STACK_DIR
    from stack.services import POOL
    from tasks.status import status_report

    report = status_report(registry_params(args), POOL, STACK_DIR)
    report["services"] += stray_lines()
    for section, lines in report.items():
        print(f"{section + ':':<11}{lines[0]}")
        for line in lines[1:]:
            print(f"{'':<11}{line}")


def cmd_env(args: argparse.Namespace) -> None:
    from stack.envfile import export_lines

    print("\n".join(export_lines(project_environment(args.params))))


def ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tool", choices=("mlflow", "prefect"), help="which UI")
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (mlflow 5000, prefect 4200)")


def cmd_ui(args: argparse.Namespace) -> None:
    """Replace this process with the tool's UI server, on the project's settings."""
    from gpt.config import load_params
    from registry import MLFLOW_UI_PORT
    from stack.processes import port_open

    env = {**os.environ, **project_environment(args.params)}
    port = str(args.port or {"mlflow": MLFLOW_UI_PORT, "prefect": PREFECT_UI_PORT}[args.tool])
    stack_url = {"mlflow": env.get("MLFLOW_TRACKING_URI", ""),
                 "prefect": env.get("PREFECT_API_URL", "").removesuffix("/api")}[args.tool]
    if stack_url.startswith("http"):
        print(f"this checkout uses the {args.tool} server at {stack_url}: its UI is there")
        return
    if args.tool == "mlflow":
        command = [str(BIN / "mlflow"), "ui", "--backend-store-uri",
                   env["MLFLOW_TRACKING_URI"], "--host", "127.0.0.1", "--port", port]
    else:
        command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                   "--port", port]
    if port_open(int(port)):
        raise OSError(f"port {port} is taken on 127.0.0.1: pick another with --port")
    print(f"{args.tool} UI: http://127.0.0.1:{port}  (Ctrl-C stops it)", flush=True)
    if args.tool == "mlflow":
        for what, url in embedded_links(load_params(args.params, args.overrides),
                                        f"http://127.0.0.1:{port}").items():
            print(f"  {what:<8}{url}", flush=True)
    os.execve(command[0], command, env)


def embedded_links(params: Params, ui: str) -> dict[str, str]:
    """The runs table, and the champion's version and run, in an embedded store's UI at ui
    (read from its SQLite file directly: the server is not up yet)."""
    from registry import embedded_uri, sqlite_experiment_id, sqlite_registry, ui_links

    uri = embedded_uri(params)
    experiment = sqlite_experiment_id(uri, params.registry.experiment)
    if experiment is None:
        return {}
    versions, aliases = sqlite_registry(uri, params.model_name) or ({}, {})
    champion = aliases.get(params.registry.champion_alias)
    run_id = versions.get(champion, {}).get("run_id") if champion else None
    return ui_links(ui, experiment, run_id, params.model_name, champion)


def cmd_stack(args: argparse.Namespace) -> int | None:
    from stack import services

    if args.stack_command == "up":
        services.up()
    elif args.stack_command == "down":
        return services.down()
    elif args.stack_command == "status":
        return services.status()
    else:
        print("\n".join(services.env_lines()))
    return None


@dataclass(frozen=True)
class Command:
    """One `tinygpt` command: its line in --help, its arguments, what runs it and an example.
    A name with a space ("stack up") is a subcommand of its GROUPS entry."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int | None]
    example: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    params: bool = True   # --params and --set
    # It talks to MLflow, Prefect or the DVC remote: with a team stack up (.stack/stack.env,
    # `tinygpt stack up`) to its servers; without one, nothing changes.
    stack: bool = False
    description: str | None = None


GROUPS = {
    "tokenizer": ("tokenizer commands",
                  "tinygpt tokenizer train --input corpus.txt --vocab-size 8192 --out tok/"),
    "stack": ("the team stack on 127.0.0.1: PostgreSQL, S3, MLflow, Prefect + worker",
              "tinygpt stack up, then tinygpt stack status"),
}
COMMANDS = (
    Command("tokenizer train", "train a tokenizer on a text file", cmd_tokenizer_train,
            "tinygpt tokenizer train --input corpus.txt --vocab-size 8192 --out tok/",
            tokenizer_train_arguments, params=False),
    Command("train", "quick path: train tokenizer + model on a text file", cmd_train,
            "tinygpt train --input corpus.txt --out runs/quick --set train.max_steps=200",
            train_arguments),
    Command("generate", "sample text from a checkpoint", cmd_generate,
            'tinygpt generate "ROMEO:" --checkpoint data/model/best --seed 1 --stats',
            generate_arguments, params=False),
    Command("export-hf", "write a Hugging Face folder (GPT-2, Llama or Qwen3)", cmd_export_hf,
            "tinygpt export-hf --checkpoint data/model/best --out hf/", export_hf_arguments,
            params=False),
    Command("retrain", "run the whole pipeline as a Prefect flow", cmd_retrain,
            'tinygpt retrain --set train.max_steps=200 (make run ARGS="..." does the same)',
            retrain_arguments, stack=True),
    Command("finetune", "prompt -> completion fine-tuning as a Prefect flow (params: sft)",
            cmd_finetune, "tinygpt finetune --set sft.init=models:/tinygpt@champion",
            finetune_arguments, stack=True),
    Command("recipes", "list the recipes (recipes/NAME.yaml), one line each", cmd_recipes,
            "tinygpt recipes, then tinygpt retrain --recipe NAME", params=False),
    Command("validate", "ingest + validate a corpus, nothing else", cmd_validate,
            "tinygpt validate pairs.jsonl --kind sft", validate_arguments),
    Command("promote", "promote a registered version to champion, or roll champion back",
            cmd_promote, "tinygpt promote --version 3 (or --rollback)", promote_arguments,
            stack=True),
    Command("history", "every recorded alias move of a model", cmd_history,
            "tinygpt history --alias champion", history_arguments, stack=True),
    Command("serve", "serve the registry's champion over HTTP", cmd_serve,
            "tinygpt serve --port 8000 --weights int8", serve_arguments, stack=True),
    Command("gc", "list (--apply: remove) half-made model versions, runs left RUNNING and the "
                  "workspaces of failed worker runs", cmd_gc,
            "tinygpt gc, then tinygpt gc --apply", gc_arguments, stack=True),
    Command("reproduce", "restore a model version's data and weights with dvc pull",
            cmd_reproduce, "tinygpt reproduce --version champion --retrain",
            reproduce_arguments, stack=True),
    Command("pull", "restore what this checkout's dvc.lock records from the DVC remote",
            cmd_pull, "git clone URL && cd tinygpt && tinygpt pull", params=False, stack=True,
            description="`dvc pull` of the locked stages from the default remote (the team "
                        "stack's when one is up), leaving out what the remote does not hold; "
                        "a deployment's flow run does this in its fresh clone."),
    Command("stack up", "start every service (state in .stack/)", cmd_stack,
            "tinygpt stack up", params=False),
    Command("stack down", "stop every service; tinygpt runs embedded again", cmd_stack,
            "tinygpt stack down", params=False),
    Command("stack status", "one line per service; exit 1 unless all are up", cmd_stack,
            "tinygpt stack status", params=False),
    Command("stack env", "print the stack's variables as `export` lines", cmd_stack,
            'eval "$(tinygpt stack env)"', params=False),
    Command("worker", "run a Prefect worker for the project's deployments (foreground)",
            cmd_worker, 'eval "$(tinygpt stack env)"; tinygpt worker --limit 1',
            worker_arguments, stack=True,
            description="`prefect worker start`: each flow run works in a fresh clone of its "
                        "deployment's commit, in a folder of its own under --work-dir (removed "
                        "after success). SIGTERM stops it as Ctrl-C does. It needs a Prefect "
                        "server (PREFECT_API_URL, or a team stack)."),
    Command("status", "the champion, what the workspace holds, dvc status, the last runs, and "
                      "whether the servers answer", cmd_status, "tinygpt status", stack=True),
    Command("env", "print the project's environment as `export` lines for a shell", cmd_env,
            'eval "$(.venv/bin/tinygpt env)"; mlflow --version',
            description="Every variable tinygpt runs its tools with (the venv's PATH, "
                        "PREFECT_HOME, the MLflow store, the data mirror; a team stack's when "
                        "one is up)."),
    Command("ui", "start the MLflow or Prefect UI on the project's store", cmd_ui,
            "tinygpt ui mlflow --port 5000", ui_arguments,
            description="Runs `mlflow ui` or `prefect server start` in the foreground with the "
                        "project's settings, so it shows this checkout's runs; when the "
                        "checkout uses a server (a team stack), prints its address instead."),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every Command, each with its example at the end of its --help."""
    parser = Parser(prog="tinygpt", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"tinygpt {package_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the whole traceback, not one line")
    commands = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        group, _, name = command.name.rpartition(" ")
        where = commands
        if group:
            if group not in groups:
                help_line, example = GROUPS[group]
                group_parser = commands.add_parser(group, help=help_line,
                                                   epilog=f"example: {example}")
                groups[group] = group_parser.add_subparsers(dest=f"{group}_command",
                                                            required=True)
            where = groups[group]
        sub = where.add_parser(name, help=command.help, description=command.description,
                               epilog=f"example: {command.example}")
        if command.arguments:
            command.arguments(sub)
        if command.params:
            _add_params_options(sub)
        sub.set_defaults(record=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key, value in embedded_defaults().items():
        os.environ.setdefault(key, value)
    if args.record.stack:
        apply_env()  # the team stack's variables, when one is up; those already set win
        ensure_remote()  # and its DVC remote, in a checkout that has only the env file
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    for noisy in ("great_expectations", "httpx", "alembic", "mlflow.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.record.run(args) or 0
    except (ValueError, OSError, RuntimeError) as err:  # one clear line, no traceback
        error, message = err, str(err)
    except KeyboardInterrupt:
        print("tinygpt: interrupted", file=sys.stderr)
        return 1
    except Exception as err:  # unexpected: one line here, the traceback in the log file
        ERROR_LOG.parent.mkdir(parents=True, exist_ok=True)
        ERROR_LOG.write_text(traceback.format_exc(), encoding="utf-8")
        error, message = err, f"{type(err).__name__}: {err} (traceback in {ERROR_LOG})"
    if args.debug:
        traceback.print_exception(error)
    print(f"tinygpt: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
