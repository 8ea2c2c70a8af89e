"""Every public name is importable, documented, and lives under a public module path."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest

import trichannels

PUBLIC_MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(trichannels.__path__, "trichannels.")
    if not any(part.startswith("_") for part in info.name.split("."))
    and not info.name.startswith("trichannels.demo.")
)


def test_public_modules_found() -> None:
    """The walk finds the core public modules (guards against an empty parametrization)."""
    for name in [
        "trichannels.consumer",
        "trichannels.routing",
        "trichannels.sync",
        "trichannels.layers",
    ]:
        assert name in PUBLIC_MODULES


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_module_exports(module_name: str) -> None:
    """Each public module has a docstring and an __all__ whose names exist and are documented."""
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no docstring"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
    for name in exported:
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType) or name.startswith("__"):
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{module_name}.{name} has no docstring"
            owner = getattr(obj, "__module__", "") or ""
            assert "._" not in owner, (
                f"{module_name}.{name} claims private module {owner}"
            )
