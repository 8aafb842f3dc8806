"""The team stack: PostgreSQL, an S3 API, an MLflow server, a Prefect server and worker on
127.0.0.1, all state under .stack/ (`tinygpt stack up | down | status | env`).

Importing the package is cheap (only the env file's reader); the services live in
`stack.services`, imported by the `stack` commands alone.
"""

from stack.envfile import ENV_FILE, STACK_DIR, VARIABLES, apply_env, read_env

__all__ = ["ENV_FILE", "STACK_DIR", "VARIABLES", "apply_env", "read_env"]
