"""Pipeline steps as plain functions, one module per step. flows/retrain.py makes them Prefect
tasks; nothing here imports Prefect at import time, so data workers load a step's chunk
function without it. Each step also runs alone as `python -m tasks STEP`, which is what
dvc.yaml calls."""
