"""The service's routers; `serve.app.create_app` includes them."""
