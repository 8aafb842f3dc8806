"""The environment tinygpt runs its tools with when nothing else is set: embedded Prefect,
MLflow, DVC and Great Expectations, quiet and offline, and the data mirror beside the
checkout. A team stack's variables (stack.envfile) and anything already set win over these.
"""

from __future__ import annotations

from pathlib import Path

# Embedded defaults for the tools the pipeline drives; anything already set wins.
ENVIRONMENT = {
    "PREFECT_HOME": str(Path(".prefect").resolve()),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # A run's output is its own lines: no download bars, no "View run" links from MLflow.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "DO_NOT_TRACK": "1",  # Prefect's client telemetry (the server's is the setting above)
    # Our loggers' lines (steps, training progress) also go to the Prefect run's logs, live;
    # outside a flow run (tinygpt train) they stay on the terminal only, without a warning.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "tinygpt",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # A lost server ends a run in seconds with one line, not after minutes of the clients'
    # retries (Prefect's default waits 2 + 4 + ... + 32 s per call, MLflow's up to minutes).
    "PREFECT_CLIENT_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# The data mirror beside the checkout, used when the corpus cannot be downloaded (as `make`).
MIRROR = Path("..").resolve() / "shared" / "data"


def embedded_defaults() -> dict[str, str]:
    """ENVIRONMENT, and the data mirror beside the checkout when there is one."""
    return {**ENVIRONMENT, **({"TINYGPT_DATA_MIRROR": str(MIRROR)} if MIRROR.is_dir() else {})}
