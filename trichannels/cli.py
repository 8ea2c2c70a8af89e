"""The ``trichannels`` command: ``serve``, ``worker`` and ``demo``.

``trichannels serve`` is a convenience over Hypercorn's trio worker with defaults
for long-lived connections; ``hypercorn --worker-class trio APP`` serves the same
application. This module runs on trio (it is the program's entry point, not
library code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import trio

from trichannels._version import __version__

__all__ = ["main"]

logger = logging.getLogger("trichannels.cli")

DEFAULT_BIND = "127.0.0.1:8000"


class UsageError(Exception):
    """A command-line argument is wrong; printed as one line, exit status 2."""


# -- loading the application -----------------------------------------------------------


def load_app(spec: str) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted) and return it.

    Raises:
        UsageError: the spec is malformed, the module cannot be imported, the
            attribute is missing, or the object is not callable.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(f"APP must look like 'module:attribute', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import module {module_name!r}: no such module"
            ) from None
        raise UsageError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(
                f"module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise UsageError(
            f"{spec!r} is not an ASGI application (got {type(obj).__name__})"
        )
    return obj


def _parse_bind(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--bind must look like HOST:PORT, got {value!r}")
    return value


def _configure_layer(url: str | None) -> None:
    if url is None:
        return
    from trichannels.exceptions import ConfigurationError
    from trichannels.layers import channel_layers

    try:
        channel_layers.configure({"default": url})
    except ConfigurationError as exc:
        raise UsageError(f"--layer: {exc}") from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# -- serving -----------------------------------------------------------------------------


def _hypercorn_config(args: argparse.Namespace) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = list(args.bind)
    config.worker_class = "trio"
    config.graceful_timeout = args.graceful_timeout
    config.websocket_ping_interval = args.ping_interval or None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = (
        logging.getLogger("hypercorn.access") if args.access_log else None
    )
    return config


async def _shutdown_trigger(grace: float) -> None:
    """Wait for SIGTERM/SIGINT, then ask open WebSockets to close with 1001."""
    from trichannels.consumer import close_websockets

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            count = close_websockets(1001, "server shutting down")
            logger.info(
                "%s received: stopped accepting; closing %d WebSocket(s) with 1001, "
                "waiting up to %ss for connections to finish",
                signal.Signals(signum).name,
                count,
                grace,
            )
            return


async def _serve_one(app: Any, config: Any, sockets: Any = None) -> None:
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    await worker_serve(
        wrap_app(app, config.wsgi_max_body_size, "asgi"),
        config,
        sockets=sockets,
        shutdown_trigger=lambda: _shutdown_trigger(config.graceful_timeout),
    )


def _child_main(
    app_spec: str, config: Any, sockets: Any, layer: str | None, level: str
) -> None:
    _setup_logging(level)
    _configure_layer(layer)
    app = load_app(app_spec)
    trio.run(_serve_one, app, config, sockets)


def serve(
    args: argparse.Namespace, app_spec: str | None = None, app: Any = None
) -> int:
    """Run the ``serve`` command; returns the exit status."""
    spec = app_spec or args.app
    if app is None:
        app = load_app(spec)
    config = _hypercorn_config(args)
    for bind in config.bind:
        _parse_bind(bind)
    if args.reload:
        from hypercorn.run import run

        config.application_path = spec
        if getattr(args, "layer", None):
            # Hypercorn's reloader starts fresh processes; they read the environment.
            os.environ["TRICHANNELS_LAYERS"] = args.layer
        config.use_reloader = True
        config.workers = 1
        logger.info(
            "serving %s with auto-reload (graceful 1001 close not applied)", spec
        )
        return int(run(config) or 0)
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        raise UsageError(
            f"cannot bind {', '.join(config.bind)}: {exc.strerror}"
        ) from None
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
    urls = [_url(sock) for sock in sockets.insecure_sockets]
    print(f"trichannels {__version__} serving {spec} on {', '.join(urls)}", flush=True)
    if args.workers == 1:
        trio.run(_serve_one, app, config, sockets)
        return 0
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(
            target=_child_main,
            args=(
                spec,
                config,
                sockets,
                getattr(args, "layer", None),
                args.log_level,
            ),
            name=f"trichannels-worker-{n}",
        )
        for n in range(args.workers)
    ]
    for child in children:
        child.start()
    for sock in sockets.insecure_sockets:
        sock.close()

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    return max((child.exitcode or 0) for child in children)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# -- worker --------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """Run the ``worker`` command; returns the exit status."""
    app = load_app(args.app)
    from trichannels.exceptions import ConfigurationError
    from trichannels.layers import channel_layers, open_channel_layers
    from trichannels.worker import serve_worker

    if args.layer_alias not in channel_layers:
        raise UsageError(
            f"no channel layer configured as {args.layer_alias!r}: pass --layer URL "
            "or set TRICHANNELS_LAYERS"
        )

    async def main() -> None:
        async with open_channel_layers():
            await serve_worker(
                app,
                args.channels,
                alias=args.layer_alias,
                concurrency=args.concurrency,
                grace_period=args.grace_period,
            )

    try:
        trio.run(main)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    return 0


# -- demo ----------------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    """Run the chat demo; returns the exit status."""
    from trichannels.demo import make_application
    from trichannels.layers import channel_layers

    if "default" not in channel_layers:
        channel_layers.configure({"default": "memory://"})
    args.workers = 1
    args.reload = False
    app = make_application(history=args.history)
    return serve(args, app_spec="trichannels.demo:application", app=app)


# -- argument parsing ----------------------------------------------------------------------


def _add_serving_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind",
        "-b",
        action="append",
        metavar="HOST:PORT",
        help=f"address to listen on; repeat for several (default {DEFAULT_BIND})",
    )
    parser.add_argument(
        "--layer",
        metavar="URL",
        help="channel layer for the 'default' alias, e.g. memory:// or redis://127.0.0.1:6379/0",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long open connections get to finish (default 10)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="WebSocket ping interval, 0 to disable (default 20)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level (default info)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``trichannels`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="trichannels",
        description="Serve trichannels applications, run channel workers, or try the chat demo.",
    )
    parser.add_argument(
        "--version", action="version", version=f"trichannels {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_serve = sub.add_parser(
        "serve",
        help="serve an ASGI application with Hypercorn's trio worker",
        description=(
            "Serve APP (module:attribute) with Hypercorn's trio worker. On SIGTERM/SIGINT it "
            "stops accepting, closes open WebSockets with 1001 (going away), waits up to "
            "--graceful-timeout seconds, then exits 0."
        ),
    )
    p_serve.add_argument(
        "app", metavar="APP", help="the application, as module:attribute"
    )
    p_serve.add_argument(
        "--workers",
        "-w",
        type=int,
        default=1,
        metavar="N",
        help="number of worker processes sharing the sockets (default 1)",
    )
    p_serve.add_argument(
        "--reload", action="store_true", help="restart when code changes (development)"
    )
    _add_serving_options(p_serve)

    p_worker = sub.add_parser(
        "worker",
        help="run the ChannelNameRouter consumers of named channels",
        description=(
            "Take messages from CHANNEL(s) of the channel layer and run APP's consumers for "
            "them. SIGTERM/SIGINT stop taking messages; messages in hand get --grace-period "
            "seconds to finish (and, on at-least-once channels, to be acknowledged)."
        ),
    )
    p_worker.add_argument(
        "app", metavar="APP", help="the application, as module:attribute"
    )
    p_worker.add_argument(
        "channels", metavar="CHANNEL", nargs="+", help="channel names to serve"
    )
    p_worker.add_argument(
        "--layer", metavar="URL", help="channel layer URL for the 'default' alias"
    )
    p_worker.add_argument(
        "--layer-alias",
        default="default",
        metavar="ALIAS",
        help="layer alias (default 'default')",
    )
    p_worker.add_argument(
        "--concurrency",
        type=int,
        default=10,
        metavar="N",
        help="messages handled at once (default 10)",
    )
    p_worker.add_argument(
        "--grace-period",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time messages in hand get after SIGTERM/SIGINT (default 10)",
    )
    p_worker.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )

    p_demo = sub.add_parser(
        "demo",
        help="run the multi-room chat demo",
        description=(
            "Run the chat demo and print its URL. With --layer redis://... several demo "
            "processes share rooms."
        ),
    )
    p_demo.add_argument(
        "--history",
        type=int,
        default=50,
        metavar="N",
        help="messages replayed on join (default 50)",
    )
    _add_serving_options(p_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trichannels`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "bind", None) is None and args.command != "worker":
        args.bind = [DEFAULT_BIND]
    _setup_logging(args.log_level)
    try:
        _configure_layer(args.layer)
        if args.command == "serve":
            if args.workers < 1:
                raise UsageError(f"--workers must be at least 1, got {args.workers}")
            return serve(args)
        if args.command == "worker":
            return worker(args)
        return demo(args)
    except UsageError as exc:
        print(f"trichannels {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
