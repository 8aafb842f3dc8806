"""Serving: the MLflow pyfunc model, the FastAPI service and its web page."""
