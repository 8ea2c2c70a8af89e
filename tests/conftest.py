"""Shared fixtures.

Async tests run on trio (pytest-trio, ``trio_mode = true``). Tests that must
also prove the library is backend-neutral are written as plain functions that
take the ``backend`` fixture and call ``anyio.run(body, backend=backend)``;
they run once on trio and once on asyncio.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import pytest

from trichannels.consumer import handler_watchdog


@pytest.fixture(params=["trio", "asyncio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The anyio backend a neutrality test runs on."""
    return str(request.param)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a module's async tests in both instance modes if it sets ``BOTH_INSTANCE_MODES``.

    An instance started while a handler watchdog runs (as under a server with
    a lifespan) has no task group of its own: its tasks run in the watchdog's
    and it waits for them. Without one (plain communicators) it opens its own.
    """
    if getattr(metafunc.module, "BOTH_INSTANCE_MODES", False) and (
        inspect.iscoroutinefunction(metafunc.function)
    ):
        metafunc.fixturenames.append("instance_mode")
        metafunc.parametrize(
            "instance_mode", ["own task group", "hosted"], indirect=True
        )


@pytest.fixture
async def instance_mode(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """``hosted``: the test runs inside ``handler_watchdog()``."""
    if request.param == "hosted":
        async with handler_watchdog():
            yield "hosted"
    else:
        yield "own task group"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "coredis_hazard: reproduces a coredis 6.9 hazard the Redis layer is designed around",
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server for ``redis``-marked tests: ``REDIS_URL``, default ``redis://127.0.0.1:6379/0``.

    Unreachable: the test is skipped with the reason, except when ``CI=true``,
    where it fails, so that CI can never silently skip the Redis tests.
    """
    import os
    import socket
    from urllib.parse import urlsplit

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            sock.recv(64)
    except OSError as exc:
        reason = (
            f"REDIS TESTS NOT RUN: no Redis server at {host}:{port} ({exc}); "
            "start one or set REDIS_URL"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: Redis tests must not be skipped)")
        pytest.skip(reason)
    return url
