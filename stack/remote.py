"""The stack's DVC remote: a bucket on the stack's S3 endpoint, as DVC's default remote.

DVC has no variable of its own for a remote, so the env file names it in TINYGPT_DVC_REMOTE
and the remote goes into `.dvc/config.local` of each DVC project of the checkout (the root's
and sft/'s; git-ignored, this checkout only): `stack up`
writes it, and any `tinygpt` command that finds the variable writes it when missing, so a
second clone holding only the env file pulls from the same bucket. `stack down` takes it out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

NAME = "stack"
VARIABLE = "TINYGPT_DVC_REMOTE"


# The DVC projects of a checkout: pretraining's at the root, fine-tuning's in sft/.
PROJECTS = (".", "sft")


def _projects(root: Path) -> list[str]:
    return [p for p in PROJECTS if (root / p / ".dvc").is_dir()]


def _config(project: Path):
    from dvc.config import Config

    return Config(dvc_dir=str(project / ".dvc"))


def use_remote(root: Path, url: str, endpoint: str,
               site_cache_dir: str | None = None) -> dict[str, Any]:
    """Make `stack` (url on endpoint) the default remote of each DVC project of the checkout;
    return what each one's core had before."""
    before = {}
    for project in _projects(root):
        with _config(root / project).edit("local") as conf:
            before[project] = {"remote": conf["core"].get("remote"),
                               "site_cache_dir": conf["core"].get("site_cache_dir")}
            conf["remote"][NAME] = {"url": url, "endpointurl": endpoint}
            conf["core"]["remote"] = NAME
            if site_cache_dir:
                conf["core"]["site_cache_dir"] = site_cache_dir
    return before


def drop_remote(root: Path, before: dict[str, Any]) -> None:
    """Remove `stack` and put each project's core remote and site cache back as they were."""
    for project in _projects(root):
        if not (root / project / ".dvc" / "config.local").is_file():
            continue
        kept = before.get(project) or {}
        with _config(root / project).edit("local") as conf:
            conf["remote"].pop(NAME, None)
            for key in ("remote", "site_cache_dir"):
                if kept.get(key):
                    conf["core"][key] = kept[key]
                else:
                    conf["core"].pop(key, None)


def ensure_remote(root: Path | None = None) -> bool:
    """With TINYGPT_DVC_REMOTE and AWS_ENDPOINT_URL set (the env file's), make sure this
    checkout's DVC projects use that remote; True when it had to be written."""
    root = root or Path.cwd()
    url, endpoint = os.environ.get(VARIABLE), os.environ.get("AWS_ENDPOINT_URL")
    if not url or not endpoint:
        return False
    missing = False
    for project in _projects(root):
        local = _config(root / project).load_one("local")
        missing |= not (local.get("remote", {}).get(NAME) == {"url": url,
                                                               "endpointurl": endpoint}
                        and local.get("core", {}).get("remote") == NAME)
    if missing:
        use_remote(root, url, endpoint)
    return missing
