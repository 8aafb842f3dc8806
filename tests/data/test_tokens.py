"""Token shards, text reading and batching."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gpt.batches import InputNoise, RandomWindows, StridedWindows, sequential_windows
from gpt.data import CorpusError, load_tokens, read_text, split_text, write_token_shards


def test_shards_round_trip_as_uint16_with_zstd(tmp_path):
    ids = np.arange(2500) % 8000
    paths = write_token_shards(ids, tmp_path, "train", 1000, vocab_size=8192)
    assert [p.name for p in paths] == [f"train-{i:05d}.parquet" for i in range(3)]
    meta = pq.ParquetFile(paths[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_schema(paths[0]).field("token").type == "uint16"
    loaded = load_tokens(tmp_path, "train")
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, ids)


def test_large_vocabularies_use_uint32(tmp_path):
    write_token_shards(np.array([70_000, 1]), tmp_path, "val", 10, vocab_size=70_001)
    assert load_tokens(tmp_path / "val-00000.parquet").dtype == np.uint32


def test_random_windows_are_seeded_and_targets_shift_by_one():
    data = np.arange(1000, dtype=np.uint16)
    a, b = RandomWindows(data, 8, 4, seed=3), RandomWindows(data, 8, 4, seed=3)
    xa, ya = a.next()
    xb, _ = b.next()
    assert torch.equal(xa, xb) and torch.equal(ya, xa + 1)
    state = a.get_state()
    nxt = a.next()[0]
    a.set_state(state)
    assert torch.equal(a.next()[0], nxt)


@pytest.mark.parametrize(("stride", "windows"), [(10, 10), (4, 24), (7, 14)])
def test_strided_windows_visit_every_window_once_per_epoch(stride, windows):
    data = np.arange(106, dtype=np.uint16)  # starts 0, stride, ... while a window fits
    source = StridedWindows(data, block_size=10, batch_size=3, seed=5, stride=stride)
    assert len(source.starts) == windows
    # Three epochs' worth: batches run across epoch boundaries and drop nothing.
    firsts = [x[:, 0] for x, _ in (source.next() for _ in range(windows))]
    seen = torch.cat(firsts).tolist()
    for epoch in range(3):
        assert sorted(seen[epoch * windows:(epoch + 1) * windows]) == list(range(
            0, 106 - 10, stride))
    assert seen[:windows] != seen[windows:2 * windows]  # each epoch shuffled anew
    x, y = source.next()
    assert torch.equal(y, x + 1) and x.shape == (3, 10)


def test_strided_windows_are_seeded_and_resume_exactly_across_epochs():
    data = np.arange(200, dtype=np.uint16)
    a = StridedWindows(data, 16, 4, seed=3, stride=8)
    b = StridedWindows(data, 16, 4, seed=3, stride=8)
    assert all(torch.equal(a.next()[0], b.next()[0]) for _ in range(10))
    state = a.get_state()  # 40 windows drawn: inside the second epoch of 23
    expected = [a.next()[0] for _ in range(15)]
    resumed = StridedWindows(data, 16, 4, seed=99, stride=8)
    resumed.set_state(state)
    assert all(torch.equal(resumed.next()[0], e) for e in expected)
    assert resumed.epoch == a.epoch


@pytest.mark.parametrize("make", [
    lambda data: RandomWindows(data, 16, 8, seed=3),
    lambda data: StridedWindows(data, 16, 8, seed=3, stride=4)])
def test_input_noise_replaces_inputs_only_with_training_tokens_and_resumes(make):
    data = np.arange(1000, 1500, dtype=np.uint16)
    clean, noisy = make(data), InputNoise(make(data), 0.25, seed=4)
    replaced = 0
    for _ in range(20):
        (x, y), (nx, ny) = clean.next(), noisy.next()
        assert torch.equal(ny, y)  # targets untouched
        hit = nx != x
        assert torch.isin(nx[hit], torch.from_numpy(data.astype(np.int64))).all()
        replaced += int(hit.sum())
    assert 0.15 < replaced / (20 * 8 * 16) < 0.3  # about p of them (a few draw the same token)
    state = noisy.get_state()
    expected = [noisy.next()[0] for _ in range(5)]
    resumed = InputNoise(make(data), 0.25, seed=99)
    resumed.set_state(state)
    assert all(torch.equal(resumed.next()[0], e) for e in expected)


def test_sequential_windows_score_every_token_once():
    data = np.arange(103, dtype=np.uint16)
    batches = sequential_windows(data, block_size=10, batch_size=4)
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    assert targets.tolist() == list(range(1, 103))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty"), (b"  \n\n", "empty"), (b"ab\x00cd", "binary"),
    (b"good text \xff\xfe bad", "invalid UTF-8 at byte offset 10"),
])
def test_unusable_text_files_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        read_text(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_text(tmp_path / "nope.txt")


def test_split_holds_out_the_tail_at_a_line_break():
    text = "".join(f"line {i}\n" for i in range(100))
    train, val = split_text(text, 0.1)
    assert train + val == text and train.endswith("\n")
    assert 0.08 < len(val) / len(text) < 0.12


def records_table(tmp_path, texts_and_sources, chunk_bytes):
    from tasks.ingest import write_records

    records = [{"doc_id": f"{source}:{i}", "text": text, "source": source,
                "n_bytes": len(text.encode())}
               for i, (text, source) in enumerate(texts_and_sources)]
    path, _, _ = write_records(records, tmp_path, chunk_bytes)
    return path


def test_chunks_join_a_sources_records_into_documents_across_row_groups(tmp_path):
    from tasks.chunks import plan

    path = records_table(tmp_path, [("a\n\n", "x"), ("b", "x"), ("c", "y"), ("d", "x"),
                                    ("e", "x"), ("f", "z")], chunk_bytes=2)
    whole = [d for chunk in plan(path, None) for d in chunk.documents()]
    assert whole == [("a\n\n", 3, False), ("b", 1, False), ("c", 1, True), ("de", 2, True),
                     ("f", 1, True)]
    chunks = plan(path, 0.2)  # row groups: a | b c | d e | f; the last 20% of bytes: e, f
    assert [c.split for c in chunks] == ["train"] * 3 + ["val"] * 2
    assert "".join(c.text() for c in chunks if c.split == "train") == "a\n\nb\n\nc\n\nd"
    assert [c for c in chunks if c.split == "val"][0].separated is False  # a split begins


def test_a_files_paragraphs_join_back_into_one_document_in_linear_time(tmp_path):
    import time

    from tasks.chunks import plan

    paragraphs = 400_000  # 40 MB in one file: adding piece by piece copied it each time
    path = records_table(tmp_path, [("x" * 99 + "\n", "f")] * paragraphs, chunk_bytes=64 << 20)
    [chunk] = plan(path, None)
    started = time.perf_counter()
    [(text, n_bytes, _)] = chunk.documents()
    assert len(text) == n_bytes == 100 * paragraphs
    assert time.perf_counter() - started < 20  # seconds; adding piece by piece: many minutes


def test_shards_fill_as_pieces_come_and_map_back_as_one_array(tmp_path):
    from gpt.data import ShardWriter, mapped_tokens

    writer = ShardWriter(tmp_path, "train", 1000, vocab_size=300)
    pieces = [np.arange(n) % 300 for n in (10, 990, 1500, 1)]
    for piece in pieces:
        writer.add(piece)
    shards = writer.close()
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == [1000, 1000, 501]
    mapped = mapped_tokens(tmp_path, "train", tmp_path / "train.npy")
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.uint16
    assert np.array_equal(mapped, np.concatenate(pieces))


def test_a_slow_chunk_holds_back_results_not_workers():
    """Results come in the chunks' order, but while the first chunk runs long the others go on
    being submitted (up to the lookahead), so the other workers never wait for it."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tasks.chunks import _in_order

    first_done, submitted = threading.Event(), []

    def work(chunk: int) -> int:
        if chunk == 0:
            first_done.wait(10)
        return chunk * 10

    with ThreadPoolExecutor(4) as pool:
        def submit(chunk: int):
            submitted.append(chunk)
            if len(submitted) == 8:  # the lookahead (4 per worker) past a stuck first chunk
                threading.Timer(0.3, first_done.set).start()
            return pool.submit(work, chunk)

        started = time.monotonic()
        results = list(_in_order(list(range(12)), submit, n_workers=2))
    assert results == [(c, c * 10) for c in range(12)]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("fit_on", "unknown_in_val"), [("train", True), ("all", False)])
def test_a_tokenizer_learns_from_the_train_split_or_every_record(tmp_path, monkeypatch,
                                                                 fit_on, unknown_in_val):
    """tokenizer.fit_on: a word only the held-out tail holds is <|unk|> to a vocabulary
    learnt from the train split, and a word of one learnt from every record."""
    import shutil

    from gpt.config import load_params
    from gpt.tokenizer import UNKNOWN, load_tokenizer
    from tasks.ingest import ingest
    from tasks.tokenize import tokenize
    from tasks.validate import validate
    from tests.scratch import ROOT

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be\n\n" * 40 + "that is the question\n\n" * 4)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    params = load_params(None, [f"data.source={corpus}", "data.sha256=null",
                                "data.val_fraction=0.1", "tokenizer.kind=word",
                                f"tokenizer.fit_on={fit_on}"])
    for step in (ingest, validate, tokenize):
        step(params)
    tokenizer = load_tokenizer(params.path("tokenizer"))
    unknown = tokenizer.special_tokens[UNKNOWN]
    assert (unknown in tokenizer.encode("question")) == unknown_in_val
    assert unknown not in tokenizer.encode("to be or not")
