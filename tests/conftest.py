"""Shared fixtures.

Async tests run on trio (pytest-trio, ``trio_mode = true``). Tests that must
also prove the library is backend-neutral are written as plain functions that
take the ``backend`` fixture and call ``anyio.run(body, backend=backend)``;
they run once on trio and once on asyncio.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["trio", "asyncio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The anyio backend a neutrality test runs on."""
    return str(request.param)
