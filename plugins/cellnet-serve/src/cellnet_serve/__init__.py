"""cellnet serve: a trained run behind HTTP.

``cellnet serve RUN`` answers on ``POST /v1/answer`` (with conversations), offers the chain's stages
(``/v1/embed``, ``/v1/think``, ``/v1/decode``), health (``/healthz``, ``/readyz``), Prometheus
metrics (``/metrics``), the API documentation (``/docs``) and a chat page (``/``). Concurrent
requests share forward passes (:mod:`cellnet_serve.batcher`). In Python::

    from cellnet_serve import Service, ServeSettings, create_app, run_loader

    app = create_app(Service(run_loader("runs/demo"), ServeSettings()))   # an ASGI app
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["create_app", "Service", "ServeSettings", "run_loader", "__version__"]

# loaded on first use: discovering the plugin (``cellnet --help``) must not import FastAPI
_LAZY = {"create_app": "cellnet_serve.app", "Service": "cellnet_serve.service",
         "run_loader": "cellnet_serve.service", "ServeSettings": "cellnet_serve.settings"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cellnet_serve' has no attribute '{name}'")
