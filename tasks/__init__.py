"""Pipeline steps. Each module holds a plain function and the Prefect task over it; each
step also runs alone as `python -m tasks STEP`, which is what dvc.yaml calls."""
