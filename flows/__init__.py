"""Prefect flows that chain the pipeline steps in tasks/."""
