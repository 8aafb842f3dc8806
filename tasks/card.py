"""The model card of a registered version: what it is, what it learned from, how it scored,
what it is not for, and the commands that bring it back. `model_card.md` in the version's run
(the MLflow UI shows it beside the model), and a one-line description on the version."""

from __future__ import annotations

import json
import shlex
from typing import Any

from gpt.config import Params
from tasks.kinds import kind_of

CARD_FILE = "model_card.md"


def size_line(manifest: dict[str, Any]) -> str:
    """The data's size as its manifest records it."""
    if "train" in manifest:
        train, val = manifest["train"], manifest["val"]
        return (f"train {train['bytes']:,} bytes / {train['tokens']:,} tokens, "
                f"val {val['bytes']:,} bytes / {val['tokens']:,} tokens")
    return ", ".join(f"{split} {count:,} records" for split, count in manifest["records"].items())


def scores(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                     if isinstance(v, float) and not k.endswith("_tokens"))


def description(params: Params, tags: dict[str, str], manifest: dict[str, Any],
                decision: str | None = None) -> str:
    """One line for the registry's version list."""
    kind = kind_of(params)
    line = (f"{params.kind} model, {params.model.n_layer}x{params.model.n_embd}, "
            f"data {tags['data_digest'][:12]} ({size_line(manifest)}), "
            f"{kind.metric_label} {float(tags[kind.metric]):.4f}")
    return f"{line}; {decision}" if decision else line


def model_card(params: Params, name: str, version: str, tags: dict[str, str],
               manifest: dict[str, Any], metrics: dict[str, Any], sample: str) -> str:
    """The card as Markdown."""
    source = params.data.source or "the configured corpus"
    overrides = json.loads(tags.get("overrides", "[]"))
    retrain = "tinygpt retrain" + "".join(f" --set {shlex.quote(o)}" for o in overrides)
    return f"""# {name} version {version}

{description(params, tags, manifest)}

## Data
- source: `{source}` ({params.kind})
- validated data sha256: `{tags['data_digest']}`
- size: {size_line(manifest)}
- tokenizer: {params.tokenizer.kind}, sha256 of its files `{tags['tokenizer_digest']}`

## Training
- code: git commit `{tags['git_commit']}`
- parameters (sha256 `{tags['params_digest']}`), overrides on params.yaml: `{tags['overrides']}`
- outputs: the `dvc.lock` with sha256 `{tags['dvc_lock_digest']}`, kept in this run

```json
{json.dumps(params.to_dict(), indent=2)}
```

## Evaluation
{scores(metrics)}

## Sample
```
{sample}
```

## Intended use and limits
{kind_of(params).purpose}

## Reproduce
```bash
git checkout {tags['git_commit'].removesuffix('-dirty')}
tinygpt reproduce --version {version}            # data, tokenizer and weights, hash-checked
tinygpt reproduce --version {version} --retrain  # train again on them, compare the weights
{retrain}   # the whole run again, from the source
```
"""
