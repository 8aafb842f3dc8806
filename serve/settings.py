"""The service's settings: which model to serve and the limits it keeps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UPLOAD_ROUTES = ("/corpus", "/build_tokenizer")  # their bodies are corpora, not JSON


@dataclass
class Settings:
    # The models served: registry URIs or checkpoint folders; the first is the default one.
    model_uris: tuple[str, ...] = ("models:/tinygpt@champion",)
    weights: str = "auto"               # decode weights: auto | fp32 | bf16 | int8
    compile: bool = False               # decode through a compiled step (compiled at load)
    poll_seconds: float = 10.0          # how often the alias is checked
    max_concurrency: int = 2            # generations running at once
    max_queue: int = 8                  # requests allowed to wait for a slot; more get 429
    max_body_bytes: int = 64 * 1024     # JSON requests
    max_upload_bytes: int = 5 * 1024 * 1024  # a corpus sent to one of UPLOAD_ROUTES
    upload_dir: Path = Path("uploads")
    # Accepted uploads stay (each is its run's data); past this total, uploads get a 413.
    max_upload_dir_bytes: int = 200 * 1024 * 1024
    retrain_deployment: str = "retrain/on-demand"
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (CORS)

    @property
    def model_uri(self) -> str:
        """The default model's URI (what the page's upload retrains)."""
        return self.model_uris[0]

    def body_limit(self, path: str) -> int:
        """The most bytes a request body to `path` may hold: the one place that says so, for
        the middleware that counts every body as it arrives."""
        return self.max_upload_bytes if path in UPLOAD_ROUTES else self.max_body_bytes
