"""The stack's DVC remote: a bucket on the stack's S3 endpoint, as DVC's default remote.

DVC has no variable of its own for a remote, so the env file names it in TINYGPT_DVC_REMOTE
and the remote goes into `.dvc/config.local` (git-ignored, this checkout only): `stack up`
writes it, and any `tinygpt` command that finds the variable writes it when missing, so a
second clone holding only the env file pulls from the same bucket. `stack down` takes it out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

NAME = "stack"
VARIABLE = "TINYGPT_DVC_REMOTE"


def _config(root: Path):
    from dvc.config import Config

    return Config(dvc_dir=str(root / ".dvc"))


def use_remote(root: Path, url: str, endpoint: str,
               site_cache_dir: str | None = None) -> dict[str, Any]:
    """Make `stack` (url on endpoint) the default remote; return what core had before."""
    with _config(root).edit("local") as conf:
        before = {"remote": conf["core"].get("remote"),
                  "site_cache_dir": conf["core"].get("site_cache_dir")}
        conf["remote"][NAME] = {"url": url, "endpointurl": endpoint}
        conf["core"]["remote"] = NAME
        if site_cache_dir:
            conf["core"]["site_cache_dir"] = site_cache_dir
    return before


def drop_remote(root: Path, before: dict[str, Any]) -> None:
    """Remove `stack` and put core's remote and site cache back as they were."""
    if not (root / ".dvc" / "config.local").is_file():
        return
    with _config(root).edit("local") as conf:
        conf["remote"].pop(NAME, None)
        for key in ("remote", "site_cache_dir"):
            if before.get(key):
                conf["core"][key] = before[key]
            else:
                conf["core"].pop(key, None)


def ensure_remote(root: Path | None = None) -> bool:
    """With TINYGPT_DVC_REMOTE and AWS_ENDPOINT_URL set (the env file's), make sure this
    checkout's DVC uses that remote; True when it had to be written."""
    root = root or Path.cwd()
    url, endpoint = os.environ.get(VARIABLE), os.environ.get("AWS_ENDPOINT_URL")
    if not url or not endpoint or not (root / ".dvc").is_dir():
        return False
    local = _config(root).load_one("local")
    if (local.get("remote", {}).get(NAME) == {"url": url, "endpointurl": endpoint}
            and local.get("core", {}).get("remote") == NAME):
        return False
    use_remote(root, url, endpoint)
    return True
