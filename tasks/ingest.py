"""ingest: the configured source -> the raw folder, as records of the run's kind.

Text (data.kind text): a text file, a folder of them, or a JSONL file -> corpus.parquet, each
record (doc_id, text, source, n_bytes). A text file becomes one record per paragraph
(its text keeps the blank lines after it, so the records join back into the exact file); a
JSONL line becomes one record. A URL source is fetched once and checked against its sha256;
with no network the same file is read from the local mirror folder named by
$TINYGPT_DATA_MIRROR.

Prompt -> completion pairs (data.kind sft): the generated verifiable or Python set, or a JSONL
file of {"prompt", "completion"} records -> pairs.jsonl, copied as read: the validation suite
reports bad fields by line.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from gpt.config import Params
from gpt.data import CorpusError, decode_utf8
from gpt.files import atomic_file, sha256_file
from tasks.common import CORPUS_FILE, PAIRS_RAW, retry_transient

MIRROR_ENV = "TINYGPT_DATA_MIRROR"
COLUMNS = ("doc_id", "text", "source", "n_bytes")
# Cut after a blank line (one or more) that is followed by more text.
_PARAGRAPH_END = re.compile(r"(?<=\n\n)(?=[^\n])")


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def fetch(url: str, sha256: str | None, downloads: Path, mirror_name: str | None = None) -> Path:
    """A local copy of url: from the mirror folder if it has one, else downloaded once."""
    name = mirror_name or url.rstrip("/").rsplit("/", 1)[-1]
    mirror = os.environ.get(MIRROR_ENV)
    candidates = [Path(mirror) / name] if mirror else []
    candidates.append(downloads / name)
    local = next((p for p in candidates if p.is_file()), None)
    if local is None:
        local = downloads / name
        downloads.mkdir(parents=True, exist_ok=True)
        partial = local.with_suffix(local.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
                out.write(response.read())
        except OSError as err:
            raise CorpusError(f"cannot download {url} ({err}) and no mirror copy of {name} "
                              f"in ${MIRROR_ENV}") from None
        partial.replace(local)
    if sha256 and sha256_file(local) != sha256:
        raise CorpusError(f"{local}: sha256 {sha256_file(local)} does not match the expected "
                          f"{sha256}")
    return local


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs that concatenate back to text exactly."""
    return [p for p in _PARAGRAPH_END.split(text) if p]


def read_bytes_checked(path: Path) -> bytes:
    data = path.read_bytes()
    if not data.strip():
        raise CorpusError(f"{path}: file is empty")
    return data


def text_records(path: Path, name: str) -> list[dict[str, Any]]:
    text = decode_utf8(read_bytes_checked(path), str(path))
    return [{"doc_id": f"{name}:{i}", "text": para, "source": name}
            for i, para in enumerate(split_paragraphs(text))]


def json_lines(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line number, object) of each non-blank line, and a problem for each line that is not
    a JSON object."""
    lines = decode_utf8(read_bytes_checked(path), str(path)).splitlines()
    objects, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {number}: not valid JSON ({err.msg})")
            continue
        if isinstance(obj, dict):
            objects.append((number, obj))
        else:
            problems.append(f"line {number}: expected a JSON object, got {type(obj).__name__}")
    return objects, problems


def refuse(path: Path, problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more"
                                            if len(problems) > 5 else "")
        raise CorpusError(f"{path}: {len(problems)} bad JSONL line(s): {shown}")


def jsonl_records(path: Path, name: str, text_field: str) -> list[dict[str, Any]]:
    """One record per non-blank line; every malformed line is reported, with its number."""
    objects, problems = json_lines(path)
    records = []
    for number, obj in objects:
        if text_field not in obj:
            problems.append(f"line {number}: missing the {text_field!r} field")
        elif not isinstance(obj[text_field], str):
            problems.append(f"line {number}: {text_field!r} must be a string, got "
                            f"{type(obj[text_field]).__name__}")
        else:
            doc_id = obj.get("id")
            records.append({"doc_id": str(doc_id) if doc_id is not None else f"{name}:{number}",
                            "text": obj[text_field], "source": f"{name}:{number}"})
    refuse(path, sorted(problems, key=lambda p: int(p.split()[1].rstrip(":"))))
    return records


def source_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CorpusError(f"{source}: folder holds no files")
        return files
    raise CorpusError(f"{source}: no such file or folder")


def read_records(source: Path, text_field: str = "text") -> list[dict[str, Any]]:
    records = []
    root = source if source.is_dir() else source.parent
    for path in source_files(source):
        name = str(path.relative_to(root))
        if path.suffix == ".jsonl":
            records.extend(jsonl_records(path, name, text_field))
        else:
            records.extend(text_records(path, name))
    for record in records:
        record["n_bytes"] = len(record["text"].encode("utf-8"))
    return records


def write_records(records: list[dict[str, Any]], out_dir: Path) -> Path:
    table = pa.table({c: [r[c] for r in records] for c in COLUMNS},
                     schema=pa.schema([("doc_id", pa.string()), ("text", pa.string()),
                                       ("source", pa.string()), ("n_bytes", pa.int64())]))
    with atomic_file(out_dir / CORPUS_FILE) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return out_dir / CORPUS_FILE


def ingest_text(params: Params, source: str | None) -> dict[str, Any]:
    """Read the configured (or given) source and write the records table."""
    data = params.data
    source = source or data.source
    if not source:
        raise CorpusError("no data source: set data.source in params.yaml or pass one")
    raw_dir = params.path("raw")
    local = (fetch(source, data.sha256, raw_dir.parent / "downloads", data.mirror_name)
             if is_url(source) else Path(source))
    records = read_records(local, data.text_field)
    path = write_records(records, raw_dir)
    return {"path": str(path), "rows": len(records), "source": str(local),
            "bytes": sum(r["n_bytes"] for r in records)}


# -- prompt/completion records (fine-tuning) ----------------------------------------------------

ANSWER_FIELDS = ("completion", "code")


def read_pairs(path: str | Path):
    """JSONL prompt/completion records as a frame with the raw values and line numbers.

    Lines that are not JSON objects stop here; missing, empty or non-string fields are left
    for the validation suite, which reports them by line. A record without a `split` goes to
    train, val or test by its prompt's hash, as the built-in sets do.
    """
    import pandas as pd

    from gpt.sft_data import split_of

    source = Path(path)
    objects, problems = json_lines(source)
    refuse(source, problems)
    rows = [{"doc_id": f"line {number}", "prompt": obj.get("prompt"),
             "completion": next((obj[f] for f in ANSWER_FIELDS if f in obj), None),
             "split": obj.get("split") or (split_of(obj["prompt"]) if isinstance(
                 obj.get("prompt"), str) else "train"),
             "task": obj.get("task", "")}
            for number, obj in objects]
    frame = pd.DataFrame(rows, columns=["doc_id", "prompt", "completion", "split", "task"])
    return frame.astype({"prompt": object, "completion": object})


def ingest_pairs(params: Params, source: str | None) -> dict[str, Any]:
    """The configured (or given) fine-tuning set, generated or a JSONL file -> pairs.jsonl."""
    from gpt.sft_data import python_tasks, verifiable_tasks, write_jsonl

    sft = params.sft
    dataset = source or sft.dataset
    target = params.path("raw") / PAIRS_RAW
    with atomic_file(target) as tmp:
        if dataset == "verifiable":
            write_jsonl(verifiable_tasks(sft.records, sft.seed), tmp)
        elif dataset == "python":
            write_jsonl(python_tasks(), tmp)
        else:
            local = Path(dataset)
            if not local.is_file():
                raise CorpusError(f"{local}: no such file (sft.dataset is 'verifiable', "
                                  f"'python' or a JSONL path)")
            read_pairs(local)  # refuse broken JSONL before copying it
            tmp.write_bytes(local.read_bytes())
    frame = read_pairs(target)
    return {"path": str(target), "rows": len(frame), "source": dataset,
            "bytes": target.stat().st_size}


READERS = {"text": ingest_text, "sft": ingest_pairs}


def ingest(params: Params, source: str | None = None) -> dict[str, Any]:
    """The run's source (data.source, sft.dataset, or the one given) -> the raw folder."""
    return READERS[params.kind](params, source)


ingest_task = task(ingest, name="ingest", retries=2, retry_delay_seconds=5,
                   retry_condition_fn=retry_transient)
