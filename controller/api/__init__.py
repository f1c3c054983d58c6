"""The controller's HTTP API (FastAPI): build one with `controller.api.app.create_app`."""
