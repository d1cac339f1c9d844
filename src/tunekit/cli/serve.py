"""``tunekit serve PATH [PATH ...]``: saved tuners behind an OpenAI-compatible API (the ``serve`` extra).

Each PATH is a directory written by ``Tuner.save`` (``NAME=PATH`` names it; else its folder's name); a request's
``model`` picks one. Adapters trained on one base share one copy of it, and the bare base is served under its own
name. Binds to 127.0.0.1; any other address needs an API key (``--api-key`` or ``TUNEKIT_API_KEY``).
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tunekit.cli.load_flags import add_load_flags, load_options
from tunekit.errors import ConfigError

__all__ = ["add_serve_parser", "check_bind", "named_saves"]

_LOOPBACK = ("localhost",)


def named_saves(paths: list[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` or ``PATH`` (named after its folder) as ``(name, path)`` pairs."""
    out = []
    for item in paths:
        name, sep, path = item.partition("=")
        if not sep or not name or Path(item).exists():
            name, path = Path(item.rstrip("/\\")).name, item
        if not Path(path).is_dir():
            raise ConfigError(f"tunekit serve {item}: no such directory (pass directories written by Tuner.save)")
        out.append((name, path))
    return out


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if host in _LOOPBACK:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not api_key:
        raise ConfigError(
            f"tunekit serve --host {host}: listening beyond this machine needs an API key; pass --api-key KEY (or set "
            "TUNEKIT_API_KEY), and clients send it as 'Authorization: Bearer KEY' (the openai client's api_key)"
        )


def _cmd_serve(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("TUNEKIT_API_KEY") or None
    check_bind(args.host, api_key)
    if args.max_queue < 1:
        raise ConfigError(f"tunekit serve --max-queue {args.max_queue}: must be at least 1")
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing and args.engine == "hf":
        raise ConfigError(f"tunekit serve needs {' and '.join(missing)}: pip install 'tunekit[serve]'")
    saves = named_saves(args.paths)
    log = logging.getLogger("tunekit.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    import uvicorn  # noqa: PLC0415 -- the serve extra, for this command only

    from tunekit.serving import ModelPool, create_app  # noqa: PLC0415 -- the serve extra, for this command only

    if args.engine == "vllm":
        from tunekit.serving.vllm_engine import run_vllm  # noqa: PLC0415 -- CUDA and vllm, for --engine vllm only

        return run_vllm(saves, host=args.host, port=args.port, api_key=api_key, **load_options(args))
    pool = ModelPool.from_saves(saves, max_pending=args.max_queue, **load_options(args))
    app = create_app(pool, api_key=api_key)
    names = ", ".join(sorted(pool.routes))
    print(f"tunekit serve: http://{args.host}:{args.port}/v1 (models: {names})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        pool.close()
    print("tunekit serve: stopped", file=sys.stderr, flush=True)
    return 0


def add_serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="Serve saved tuners behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models).",
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="Directories written by Tuner.save; NAME=PATH serves one as NAME."
    )
    p.add_argument("--host", default="127.0.0.1", help="The address to listen on (default 127.0.0.1: this machine).")
    p.add_argument("--port", type=int, default=8000, help="The port (default 8000).")
    p.add_argument(
        "--api-key", default=None, help="Require this key (Authorization: Bearer KEY); or set TUNEKIT_API_KEY."
    )
    p.add_argument(
        "--max-queue", type=int, default=64,
        help="Most requests waiting or running at once; past it a request gets HTTP 429 (default 64).",
    )  # fmt: skip
    p.add_argument(
        "--engine", choices=("hf", "vllm"), default="hf",
        help="hf: transformers + peft (any device); vllm: vLLM with its LoRA support (CUDA, vllm installed).",
    )  # fmt: skip
    add_load_flags(p)
    p.set_defaults(func=_cmd_serve)
