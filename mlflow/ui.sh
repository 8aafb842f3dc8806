#!/bin/sh
# The MLflow UI over the embedded store (run from the project root): http://127.0.0.1:5000
exec mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db \
    --default-artifact-root ./mlflow/artifacts --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}"
