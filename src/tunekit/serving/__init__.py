"""``tunekit serve``: trained models behind an OpenAI-compatible HTTP API (the ``serve`` extra: FastAPI, uvicorn).

:class:`ModelPool` holds the served models (several adapters on one copy of their base) and bounds the requests in
flight; :func:`create_app` is the FastAPI application over it, for ``uvicorn`` or to mount in an application's own.
"""

from __future__ import annotations

from tunekit.serving.app import create_app
from tunekit.serving.pool import ModelPool

__all__ = ["ModelPool", "create_app"]
