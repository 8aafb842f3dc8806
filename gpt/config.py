"""params.yaml, typed: one dataclass per section, each key declared once with its default and
its check. No torch here, so the CLI, DVC stages and the service read settings cheaply.

`load_params()` reads params.yaml (then `--set section.key=value` overrides) into `Params`.
A key the dataclasses do not declare is refused with the nearest valid name, so a misspelt
key never passes silently. A `data.kind` other than `text` applies that kind's overlay
section (`sft.model`, `sft.train`, ...) on top of the shared sections.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from gpt.tokenizer import FREQUENCY_KINDS, TOKENIZER_KINDS

PARAMS_FILE = "params.yaml"
TINY_SHAKESPEARE = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                    "tinyshakespeare/input.txt")
DATA_KINDS = ("text", "sft")
WINDOWS = ("random", "strided")
ATTENTION_IMPLS = ("auto", "sdpa", "explicit")
ARCHS = ("gpt2", "modern")
DTYPES = ("auto", "float32", "bfloat16")
OPTIMIZERS = ("adamw", "muon")
# How a model's weights are stored for decoding (gpt/quantize.py); auto: int8 on a CPU, where
# bench/generate.py measured it fastest with val bits per byte within 0.01 of fp32, else fp32.
WEIGHT_FORMATS = ("auto", "fp32", "bf16", "int8")


def _positive_ints(section: str, config: Any, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{section}.{name} must be a positive integer, got {value!r}")


def _one_of(section: str, name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{section}.{name} must be one of {', '.join(allowed)}; got {value!r}")


# -- the sections --------------------------------------------------------------------------------


@dataclass
class DataConfig:
    kind: str = "text"             # text: a corpus to continue | sft: prompt -> completion pairs
    # A path (file or folder, text or JSONL) or a URL checked against sha256. With no network,
    # a URL is read from the mirror folder named by $TINYGPT_DATA_MIRROR, as mirror_name.
    source: str | None = TINY_SHAKESPEARE
    sha256: str | None = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    mirror_name: str | None = "tinyshakespeare.txt"
    text_field: str = "text"       # the JSONL field holding a record's text
    val_fraction: float = 0.1      # the last share of the corpus (by bytes, whole documents)
    tokens_per_shard: int = 1 << 20
    # Training windows of model.block_size tokens (the write-ups' max_length): random offsets
    # (nanoGPT), or strided: starts every `stride` tokens, each once per epoch, shuffled.
    windows: str = "random"
    stride: int | None = None      # strided: None = model.block_size (windows do not overlap)
    # The share of the training windows' input tokens replaced by a random training token
    # (unigram noising, gpt/batches.py InputNoise); the targets and validation stay clean.
    input_noise: float = 0.1
    # Stop a run whose data's byte distribution moved further than this from the champion's
    # (Jensen-Shannon divergence in bits, 0 to 1); None: measure and report only.
    max_drift: float | None = None
    # Data preparation works in chunks of about this many MB of text (a Parquet row group of
    # the raw and validated records): memory per step is bounded by a chunk, not the corpus.
    # A record (a paragraph, a JSONL line) longer than a chunk is refused at ingest.
    chunk_mb: float = 4.0
    # Where validation, pretoken counting and encoding run when there is more than one chunk:
    # null starts a Dask local cluster of `workers` processes (0: one per core; 1: none, they
    # run in this process); an address (tcp://HOST:PORT) sends them to a running Dask cluster.
    dask_address: str | None = None
    workers: int = 0

    def __post_init__(self) -> None:
        _one_of("data", "kind", self.kind, DATA_KINDS)
        if not self.chunk_mb > 0:
            raise ValueError(f"data.chunk_mb must be positive, got {self.chunk_mb!r}")
        if self.workers < 0:
            raise ValueError(f"data.workers must be >= 0 (0: one per core), got "
                             f"{self.workers!r}")
        if self.dask_address is not None and "://" not in self.dask_address:
            raise ValueError(f"data.dask_address must be a scheduler address like "
                             f"tcp://HOST:PORT, got {self.dask_address!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        _positive_ints("data", self, ["tokens_per_shard"])
        _one_of("data", "windows", self.windows, WINDOWS)
        if self.stride is not None:
            _positive_ints("data", self, ["stride"])
            if self.windows != "strided":
                raise ValueError("data.stride applies to data.windows: strided")
        if not 0 <= self.input_noise < 1:
            raise ValueError(f"data.input_noise must be in [0, 1), got {self.input_noise!r}")
        if self.max_drift is not None and not 0 <= self.max_drift <= 1:
            raise ValueError(f"data.max_drift must be in [0, 1] (bits) or null, got "
                             f"{self.max_drift!r}")

    @property
    def chunk_bytes(self) -> int:
        return max(1, int(self.chunk_mb * 2**20))


@dataclass
class ValidateConfig:
    """The Great Expectations suite's bounds."""

    min_chars: int = 1
    max_chars: int = 100_000       # per record (a paragraph of a text file, a JSONL record)
    max_control_share: float = 0.01
    min_rows: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError("validate.min_chars must be between 0 and validate.max_chars")
        if not 0 <= self.max_control_share <= 1:
            raise ValueError("validate.max_control_share must be in [0, 1]")


@dataclass
class EvaluateConfig:
    """How much held-out text the text kind's evaluation scores."""

    # At most this many validation tokens are scored: a fixed, evenly spaced sample of the
    # validation records when the split is larger (the same text for candidate and champion).
    max_tokens: int = 1 << 20

    def __post_init__(self) -> None:
        _positive_ints("evaluate", self, ["max_tokens"])


@dataclass
class TokenizerConfig:
    kind: str = "bpe"              # bpe | char | word | regex
    vocab_size: int = 2048         # word, regex: a cap on the most frequent pieces
    min_frequency: int = 1         # word, regex: fewer occurrences in training -> <|unk|>
    drop_whitespace: bool = False  # regex: whitespace is no token; decode spaces the words
    # The records it learns from: the train split (the held-out text stays unseen), or all of
    # them, as a tokenizer trained on the whole corpus file is (a word vocabulary then has no
    # <|unk|> in the held-out text, whose bits per byte then count every word).
    fit_on: str = "train"          # train | all
    # char, as the 002 write-up builds it: a <|unk|> token for characters unseen in training
    # (else they are refused), printable ASCII in the vocabulary whatever the corpus holds,
    # and the special tokens at the first ids.
    unknown: bool = False
    seed_ascii: bool = False
    specials_first: bool = False

    def __post_init__(self) -> None:
        _one_of("tokenizer", "kind", self.kind, list(TOKENIZER_KINDS))
        _one_of("tokenizer", "fit_on", self.fit_on, FIT_ON)
        for option in ("unknown", "seed_ascii", "specials_first"):
            if getattr(self, option) and self.kind != "char":
                raise ValueError(f"tokenizer.{option} applies to the char kind, not "
                                 f"{self.kind}")
        _positive_ints("tokenizer", self, ["vocab_size", "min_frequency"])
        if self.min_frequency != 1 and self.kind not in FREQUENCY_KINDS:
            raise ValueError(f"tokenizer.min_frequency applies to the "
                             f"{' and '.join(FREQUENCY_KINDS)} kinds, not {self.kind}")
        if self.drop_whitespace and self.kind != "regex":
            raise ValueError(f"tokenizer.drop_whitespace applies to the regex kind, not "
                             f"{self.kind}")


FIT_ON = ("train", "all")


@dataclass
class GPTConfig:
    """The model section; vocab_size is not a parameter but comes from the tokenizer."""

    vocab_size: int = 50257
    block_size: int = 128    # longest context the position embedding covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.15
    bias: bool = True        # biases in Linear and LayerNorm, as GPT-2 has (the next two narrow it)
    qkv_bias: bool = True    # with bias: the attention's query, key and value projections too
    mlp_bias: bool = False   # with bias: the MLP's projections too (Qwen3's MLP has none)
    # "sdpa" (the fused kernel), "explicit" (the masked softmax written out, for reading), or
    # "auto": the faster of the two for the device, dtype and length (gpt.model.attention_form)
    attn_impl: str = "sdpa"
    # gpt2: learned positions, LayerNorm, GELU MLP. modern: rotary positions, RMSNorm and a
    # SwiGLU MLP, as Llama and Qwen have (exported as those).
    arch: str = "modern"
    qk_norm: bool = True     # modern: RMSNorm on each head's queries and keys (Qwen3)
    tie_embeddings: bool = True  # the output head reuses the token embedding matrix

    def __post_init__(self) -> None:
        _positive_ints("model", self, ["vocab_size", "block_size", "n_layer", "n_head",
                                       "n_embd"])
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd ({self.n_embd}) must be divisible by "
                             f"model.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        _one_of("model", "attn_impl", self.attn_impl, ATTENTION_IMPLS)
        _one_of("model", "arch", self.arch, ARCHS)
        if self.qk_norm and self.arch != "modern":
            raise ValueError("model.qk_norm needs model.arch: modern")
        if self.arch == "modern" and (self.n_embd // self.n_head) % 2:
            raise ValueError("model.arch modern needs an even head size (n_embd / n_head) for "
                             "rotary embeddings")

    def to_dict(self) -> dict:
        return asdict(self)


# GPT-2's block (the defaults are Qwen3's): what the gpt2 recipe, fine-tuning's overlay and the
# benches against GPT-2-shaped peers set on GPTConfig.
GPT2_BLOCK: dict[str, Any] = {"arch": "gpt2", "qk_norm": False, "bias": True, "mlp_bias": True}


@dataclass
class TrainConfig:
    max_steps: int = 1500
    batch_size: int = 32
    grad_accum: int = 1            # micro-batches per optimizer step
    learning_rate: float = 2e-3
    min_lr: float = 1e-4           # where the cosine decay ends
    warmup_steps: int = 50
    weight_decay: float = 0.1      # applied to matrices only, not to biases or LayerNorms
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0         # max global gradient norm; 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 10           # batches per loss estimate
    patience: int = 0              # evals without improvement before stopping; 0 = never
    log_interval: int = 50
    seed: int = 1337
    device: str = "auto"           # "auto", "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"            # autocast dtype: "auto", "float32", "bfloat16"
    max_seconds: float = 0.0       # wall-clock budget for the loop; 0 = none
    nproc: int = 1                 # training processes under torchrun (DDP); 1 = in-process
    # Across hosts: each of `nnodes` runs the train step with its own node_rank, nproc processes
    # each; node 0 keeps the model and reports; their ranks meet at node 0's rdzv_endpoint.
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # HOST:PORT, a free port on node 0
    # adamw | muon: Muon on the blocks' weight matrices, AdamW on the rest (gpt/muon.py)
    optimizer: str = "muon"
    muon_lr: float = 0.02          # muon: its own peak rate, on the same schedule
    muon_momentum: float = 0.95
    # Share of the training tokens (the split's start, at most CALIBRATION_MAX_TOKENS) held out to
    # fit one temperature for the logits after training, folded into best/ (gpt/calibrate.py);
    # 0: none. The validation split stays out of it.
    calibration_share: float = 0.02
    # Compile the training step (forward and backward) with torch.compile; where that fails
    # (no C++ compiler, an unsupported op), training goes on uncompiled. auto: where it was
    # measured faster, long enough to repay compiling (gpt.train.pick_compile).
    compile: bool | str = "auto"
    # Besides best/ and latest/, a resumable step-NNNNNN/ folder every this many steps (0: none),
    # of which the newest keep_checkpoints stay.
    checkpoint_interval: int = 0
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        _positive_ints("train", self, ["max_steps", "batch_size", "grad_accum",
                                       "eval_interval", "eval_iters", "log_interval", "nproc",
                                       "nnodes", "keep_checkpoints"])
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"train.node_rank must be in [0, train.nnodes), got "
                             f"{self.node_rank!r}")
        if self.nnodes > 1 and not re.fullmatch(r"[\w.\-]+:\d+", self.rdzv_endpoint or ""):
            raise ValueError(f"train.nnodes={self.nnodes} needs train.rdzv_endpoint, node 0's "
                             f"HOST:PORT, got {self.rdzv_endpoint!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"train.learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ValueError(f"train.min_lr must be in [0, learning_rate], got {self.min_lr!r}")
        for name in ("warmup_steps", "patience", "weight_decay", "grad_clip", "max_seconds",
                     "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("train.beta1 and train.beta2 must be in [0, 1)")
        if not 0 <= self.calibration_share < 0.5:
            raise ValueError(f"train.calibration_share must be in [0, 0.5), got "
                             f"{self.calibration_share!r}")
        _one_of("train", "dtype", self.dtype, DTYPES)
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"train.compile must be true, false or auto; got {self.compile!r}")
        _one_of("train", "optimizer", self.optimizer, OPTIMIZERS)
        if not self.muon_lr > 0 or not 0 <= self.muon_momentum < 1:
            raise ValueError("train.muon_lr must be > 0 and train.muon_momentum in [0, 1)")


@dataclass
class SamplingParams:
    """How a continuation is sampled. These defaults are every sampler's: params.yaml's sample
    section, the registered model's signature, the service's /generate and its page."""

    max_new_tokens: int = 200
    temperature: float = 0.8           # 0 means greedy
    top_k: int | None = 50             # keep the k most likely tokens
    top_p: float | None = None         # keep the smallest set whose probability reaches p
    repetition_penalty: float = 1.0    # > 1 discourages tokens already in the context
    seed: int | None = None            # same seed, same parameters -> same sample
    stop: Sequence[str] = field(default_factory=tuple)  # text at which generation ends
    context_tokens: int | None = None  # the most recent tokens it attends to; None: its block

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, "
                             f"got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.context_tokens is not None and (
                not isinstance(self.context_tokens, int) or self.context_tokens < 1):
            raise ValueError(f"context_tokens must be a positive integer, "
                             f"got {self.context_tokens!r}")


    def tunable(self) -> dict[str, Any]:
        """The settings a person tunes for a model (TUNABLE_SAMPLING): a recipe's choice of
        them is registered with its model, and the service and its page start from it."""
        return {name: getattr(self, name) for name in TUNABLE_SAMPLING}


TUNABLE_SAMPLING = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")


@dataclass
class SampleConfig(SamplingParams):
    """The samples written after training: a prompt and how to sample from it."""

    seed: int | None = 1337
    prompt: str = "ROMEO:"

    def sampling(self, **overrides: Any) -> SamplingParams:
        """SamplingParams of this section; overrides that are not None win."""
        values = {f.name: getattr(self, f.name) for f in fields(SamplingParams)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return SamplingParams(**values)


@dataclass
class PathsConfig:
    """Where each step writes; the file names inside live in tasks.common."""

    raw: str = "data/raw"
    validated: str = "data/validated"
    tokenizer: str = "data/tokenizer"
    tokens: str = "data/tokens"
    model: str = "data/model"
    metrics: str = "metrics"
    reports: str = "reports"


@dataclass
class RegistryConfig:
    """MLflow: MLFLOW_TRACKING_URI, when set, overrides tracking_uri."""

    tracking_uri: str = "sqlite:///mlflow/mlflow.db"
    artifact_root: str = "mlflow/artifacts"
    experiment: str = "tinygpt"
    model_name: str = "tinygpt"
    champion_alias: str = "champion"
    candidate_alias: str = "candidate"


# A kind's overlay: a kind with a section of its own name (sft) lays that section's partial
# tokenizer, model, train and paths over the shared ones when data.kind names it.
OVERLAY_SECTIONS = ("tokenizer", "model", "train", "paths")


@dataclass
class SFTConfig:
    """Prompt -> completion fine-tuning (`data.kind: sft`, or `tinygpt finetune`)."""

    dataset: str = "verifiable"    # verifiable (generated, answers known) | python | a JSONL path
    records: int = 6000            # size of the generated verifiable set
    seed: int = 0
    init: str | None = None        # a registered model to start from: models:/tinygpt@champion
    model_name: str = "tinygpt-sft"
    max_new_tokens: int | None = None  # longest answer generated when scoring; None: one
    #                                    more token than the set's longest answer
    fallback: bool = False         # a degenerate answer -> the closest training prompt's answer
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"kind": "char",
                                                               "vocab_size": 256})
    model: dict[str, Any] = field(default_factory=lambda: {
        "block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0,
        **GPT2_BLOCK})
    train: dict[str, Any] = field(default_factory=lambda: {
        "optimizer": "adamw", "max_steps": 3000, "batch_size": 64, "learning_rate": 2e-3,
        "min_lr": 1e-4, "warmup_steps": 50, "eval_interval": 250, "log_interval": 50})
    paths: dict[str, Any] = field(default_factory=lambda: {
        **{name: f"sft/data/{name}" for name in ("raw", "validated", "tokenizer", "tokens",
                                                 "model")},
        "metrics": "sft/metrics", "reports": "reports/sft"})

    def __post_init__(self) -> None:
        _positive_ints("sft", self, ["records"] + (["max_new_tokens"]
                                                   if self.max_new_tokens is not None else []))
        for name in OVERLAY_SECTIONS:
            check_keys(f"sft.{name}", getattr(self, name), SECTIONS[name],
                       exclude=DERIVED.get(name, ()))


@dataclass
class Params:
    """Every section of params.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)

    @property
    def kind(self) -> str:
        return self.data.kind

    def path(self, name: str) -> Path:
        """A project path of the paths section, relative to the working directory."""
        return Path(getattr(self.paths, name))

    def model_config(self, vocab_size: int) -> GPTConfig:
        return replace(self.model, vocab_size=vocab_size)

    @property
    def window_stride(self) -> int | None:
        """The training windows' stride, or None for random windows."""
        if self.data.windows == "random":
            return None
        return self.data.stride or self.model.block_size

    @property
    def model_name(self) -> str:
        """The registered model name this kind's runs register under."""
        return self.model_name_of(self.kind)

    def model_name_of(self, kind: str) -> str:
        """The registered model name a kind's runs register under."""
        return (getattr(self, kind) if has_overlay(kind) else self.registry).model_name

    def to_dict(self) -> dict[str, Any]:
        """Plain values of every section (what MLflow records and cache keys hash)."""
        return asdict(self)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Params)}  # type: ignore
# Keys a section's dataclass has but params.yaml may not set: they are derived at run time.
DERIVED = {"model": ("vocab_size",)}


# -- reading -------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 3e-4 as a float (YAML 1.2), not the string YAML 1.1 makes it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$"
               r"|^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """The YAML in text, or a one-line ValueError naming its source, line and column."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{source}: not valid YAML{where}: {problem}") from None


def unknown_key(name: str, known: Iterable[str], prefix: str = "") -> ValueError:
    """'train.max_step: unknown key; did you mean train.max_steps?'"""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {prefix}{close[0]}?" if close else (
        f"; known: {', '.join(sorted(known))}")
    return ValueError(f"{prefix}{name}: unknown key{hint}")


def check_keys(section: str, values: Mapping[str, Any], cls: type,
               exclude: Iterable[str] = ()) -> None:
    """Refuse any key of values that cls does not declare (or that is derived)."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{section} must be a mapping of keys, got {type(values).__name__}")
    known = [f.name for f in fields(cls) if f.name not in set(exclude)]
    for key in values:
        if key not in known:
            raise unknown_key(str(key), known, f"{section}.")


def _check_type(where: str, value: Any, hint: Any) -> None:
    """Refuse a value of the wrong type: a string where a number belongs, and so on."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if not any(_matches(value, option) for option in get_args(hint)):
            raise ValueError(f"{where} must be {_describe(hint)}, got {value!r}")
    elif not _matches(value, hint):
        raise ValueError(f"{where} must be {_describe(hint)}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = get_origin(hint)
    if origin is not None:
        return isinstance(value, origin if isinstance(origin, type) else object)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    names = [getattr(h, "__name__", str(h)) for h in (get_args(hint) or (hint,))]
    return " or ".join("null" if n == "NoneType" else n for n in names)


def build_section(name: str, values: Mapping[str, Any] | None, cls: type | None = None) -> Any:
    """One section's dataclass from its mapping: unknown keys and wrong types are refused."""
    cls = cls or SECTIONS[name]
    values = dict(values or {})
    check_keys(name, values, cls, exclude=DERIVED.get(name, ()))
    hints = get_type_hints(cls)
    for key, value in values.items():
        _check_type(f"{name}.{key}", value, hints[key])
    if "stop" in values:
        values["stop"] = tuple(values["stop"])
    return cls(**values)


def build_params(raw: Mapping[str, Any]) -> Params:
    """Params from a params.yaml mapping, with the kind's overlay applied."""
    if not isinstance(raw, Mapping):
        raise ValueError("params must be a mapping of sections")
    for name in raw:
        if name not in SECTIONS:
            raise unknown_key(str(name), SECTIONS)
    for name, values in raw.items():
        if not isinstance(values, Mapping | type(None)):
            raise ValueError(f"{name}: must be a section of key: value lines, got "
                             f"{type(values).__name__} {values!r}")
    base = {name: dict(raw.get(name) or {}) for name in SECTIONS}
    kind = base["data"].get("kind", DataConfig.kind)
    if has_overlay(kind):
        overlay = build_section(kind, base[kind])
        for name in OVERLAY_SECTIONS:
            base[name] = {**base[name], **getattr(overlay, name)}
    return Params(**{name: build_section(name, values) for name, values in base.items()})


def read_params_file(path: str | Path | None = None) -> dict[str, Any]:
    """The raw mapping of params.yaml (default: the one in the working directory)."""
    source = Path(path) if path is not None else Path(PARAMS_FILE)
    if path is not None and not source.is_file():
        raise FileNotFoundError(f"parameter file {source} does not exist")
    raw = (parse_yaml(source.read_text(encoding="utf-8"), str(source)) if source.is_file()
           else {})
    if not isinstance(raw, dict | type(None)):
        raise ValueError(f"{source} must hold a mapping of sections")
    return raw or {}


# -- recipes: named overlays on params.yaml (recipes/NAME.yaml) ----------------------------------

RECIPES_DIR = Path("recipes")


def list_recipes(folder: Path = RECIPES_DIR) -> dict[str, str]:
    """{name: its one-line summary (the file's first comment line)} of every recipe."""
    recipes = {}
    for path in sorted(folder.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
        recipes[path.stem] = first.removeprefix("#").strip()
    return recipes


def as_overrides(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Nested sections of values as `section.key=value` overrides: {"model": {"bias": True}}
    -> ["model.bias=true"]."""
    out = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            out += as_overrides(value, f"{prefix}{key}.")
        else:  # JSON is YAML: the override parser reads the value back exactly
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def recipe_overrides(name: str, folder: Path = RECIPES_DIR) -> list[str]:
    """A recipe as `section.key=value` overrides, laid over params.yaml before any --set:
    a recipe run is a run with these overrides, recorded and reproduced like any other."""
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = list(list_recipes(folder))
        close = difflib.get_close_matches(name, known, n=1)
        raise ValueError(f"no recipe {name!r}" + (f"; did you mean {close[0]}?" if close else
                                                   f"; recipes: {', '.join(known) or 'none'}"))
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} must hold a mapping of sections")
    return as_overrides(raw)


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Params:
    """Read params.yaml (default: the working directory's), apply overrides, check it all."""
    overrides = list(overrides)
    raw = apply_overrides(read_params_file(path), overrides)
    kind = (raw.get("data") or {}).get("kind")
    if has_overlay(kind):
        raw = apply_overrides(raw, onto_overlay(kind, overrides))
    return build_params(raw)


def has_overlay(kind: Any) -> bool:
    """Whether a data kind has a params section of its own to lay over the shared ones."""
    return kind in DATA_KINDS and kind in SECTIONS


def onto_overlay(kind: str, overrides: Iterable[str]) -> list[str]:
    """A fine-tuning run reads tokenizer, model, train and paths from the sft section, so an
    override of one of them (`train.max_steps=30`) goes there too: it wins over what
    params.yaml's or a recipe's sft section says, as an override should."""
    return [f"{kind}.{item.strip()}" for item in overrides
            if item.strip().split(".", 1)[0] in OVERLAY_SECTIONS]


def apply_overrides(params: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply 'section.key=value' strings; values are parsed as YAML (200, 3e-4, true, ...)."""
    result = copy.deepcopy(dict(params))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"override {item!r} must look like section.key=value")
        *sections, leaf = key.strip().split(".")
        node = result
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {section} is not a section")
        node[leaf] = parse_yaml(raw, f"override {item!r}")
    return result


def with_paths(params: Params, **paths: str) -> Params:
    """A copy of params whose steps read and write the given paths (e.g. a scratch folder)."""
    return replace(params, paths=replace(params.paths, **paths))


def as_flat_dict(config: Any, prefix: str = "") -> dict[str, Any]:
    """{'train.max_steps': 1000, ...} of a dataclass (nested sections joined with dots)."""
    values = asdict(config) if is_dataclass(config) else dict(config)
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(as_flat_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
