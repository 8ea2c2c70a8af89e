"""Channel layers: the contract, the in-memory layer, and the registry of configured layers.

Configuration is explicit. Give :meth:`ChannelLayerManager.configure` (on the
global :data:`channel_layers`) either a dict shaped like Channels'
``CHANNEL_LAYERS``::

    channel_layers.configure({
        "default": {
            "BACKEND": "trichannels.layers.memory.InMemoryChannelLayer",
            "CONFIG": {"capacity": 200},
        },
    })

or a URL per alias (``{"default": "redis://localhost:6379/0"}``), or one URL
for the default alias (``"memory://"``). Without an explicit ``configure``,
the ``TRICHANNELS_LAYERS`` environment variable is read on first use: JSON of
either form, or a bare URL for the default alias. URLs: ``memory://`` (query
parameters become options: ``memory://?capacity=200&expiry=30``),
``redis://`` and ``rediss://`` (the whole URL is passed as ``hosts=[url]``
to ``trichannels.layers.redis.RedisChannelLayer``).

Configured layers are constructed at configure time (so a bad option fails
there, naming the alias) and opened by :func:`open_channel_layers`, which the
ASGI lifespan of ``ProtocolTypeRouter`` enters at startup; their background
tasks live inside it. :func:`get_channel_layer` returns an open layer or
raises :class:`~trichannels.exceptions.InvalidChannelLayerError` naming the
alias. :meth:`ChannelLayerManager.set` installs a layer object directly (the
caller owns it and it counts as open), as Channels' ``channel_layers.set``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from trichannels.exceptions import InvalidChannelLayerError
from trichannels.layers.base import (
    BaseChannelLayer as BaseChannelLayer,
    LayerStatistics as LayerStatistics,
)
from trichannels.layers.memory import InMemoryChannelLayer as InMemoryChannelLayer

__all__ = [
    "DEFAULT_CHANNEL_LAYER",
    "ENVIRONMENT_VARIABLE",
    "BaseChannelLayer",
    "ChannelLayerManager",
    "InMemoryChannelLayer",
    "LayerStatistics",
    "channel_layers",
    "get_channel_layer",
    "open_channel_layers",
]

DEFAULT_CHANNEL_LAYER: Final = "default"
"""The alias used when none is given (Channels' ``DEFAULT_CHANNEL_LAYER``)."""

ENVIRONMENT_VARIABLE: Final = "TRICHANNELS_LAYERS"
"""Read when no configuration was given explicitly."""

_MEMORY_BACKEND: Final = "trichannels.layers.memory.InMemoryChannelLayer"
_REDIS_BACKEND: Final = "trichannels.layers.redis.RedisChannelLayer"
_SCHEMES: Final = {
    "memory": _MEMORY_BACKEND,
    "redis": _REDIS_BACKEND,
    "rediss": _REDIS_BACKEND,
}


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _query_value(text: str) -> Any:
    """``"200"`` -> 200, ``"1.5"`` -> 1.5, ``"true"`` -> True; anything else stays a str."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _import_backend(alias: str, backend: object) -> type[BaseChannelLayer]:
    if isinstance(backend, type):
        cls: object = backend
    elif isinstance(backend, str) and "." in backend:
        module_name, _, attr = backend.rpartition(".")
        try:
            module = importlib.import_module(module_name)
            cls = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            msg = (
                f"cannot import BACKEND {backend!r} for channel layer {alias!r}: {exc}"
            )
            raise InvalidChannelLayerError(msg) from exc
    else:
        msg = f"BACKEND {backend!r} for channel layer {alias!r} is not a dotted path to a class"
        raise InvalidChannelLayerError(msg)
    if not (isinstance(cls, type) and issubclass(cls, BaseChannelLayer)):
        msg = f"BACKEND {backend!r} for channel layer {alias!r} is not a BaseChannelLayer subclass"
        raise InvalidChannelLayerError(msg)
    return cls


def _check_options(
    alias: str, cls: type[BaseChannelLayer], options: Mapping[str, Any]
) -> None:
    parameters = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        known = ", ".join(sorted(parameters))
        msg = f"CONFIG for channel layer {alias!r} has unknown option(s) {', '.join(map(repr, unknown))} for {cls.__name__} (known: {known})"
        raise InvalidChannelLayerError(msg)


class _Spec:
    """One alias's validated configuration: a class and its keyword options."""

    __slots__ = ("alias", "cls", "options", "pending")

    def __init__(
        self, alias: str, cls: type[BaseChannelLayer], options: dict[str, Any]
    ) -> None:
        self.alias = alias
        self.cls = cls
        self.options = options
        self.pending: BaseChannelLayer | None = None

    def build(self) -> BaseChannelLayer:
        try:
            return self.cls(**self.options)
        except InvalidChannelLayerError as exc:
            msg = f"channel layer {self.alias!r}: {exc}"
            raise InvalidChannelLayerError(msg) from exc
        except (TypeError, ValueError) as exc:
            msg = f"channel layer {self.alias!r} could not be constructed from its CONFIG: {exc}"
            raise InvalidChannelLayerError(msg) from exc


def _parse_url(alias: str, url: str) -> tuple[str, dict[str, Any]]:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        msg = f"URL {_redact(url)!r} for channel layer {alias!r} is malformed: {exc}"
        raise InvalidChannelLayerError(msg) from exc
    backend = _SCHEMES.get(parts.scheme)
    if backend is None:
        msg = f"URL {_redact(url)!r} for channel layer {alias!r} has unknown scheme {parts.scheme!r}; expected memory://, redis:// or rediss://"
        raise InvalidChannelLayerError(msg)
    if backend == _REDIS_BACKEND:
        return backend, {"hosts": [url]}
    if parts.netloc or parts.path not in ("", "/") or parts.fragment:
        msg = f"URL {url!r} for channel layer {alias!r} must be 'memory://' with optional ?option=value parameters"
        raise InvalidChannelLayerError(msg)
    return backend, {
        key: _query_value(value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    }


def _parse_entry(alias: object, entry: object) -> _Spec:
    if not isinstance(alias, str) or not alias:
        msg = f"channel layer alias {alias!r} is not a non-empty str"
        raise InvalidChannelLayerError(msg)
    if isinstance(entry, str):
        backend, options = _parse_url(alias, entry)
        cls = _import_backend(alias, backend)
    elif isinstance(entry, Mapping):
        if "ROUTING" in entry:
            msg = f"ROUTING key found for channel layer {alias!r}; it is not used (route with ChannelNameRouter instead)"
            raise InvalidChannelLayerError(msg)
        unknown = sorted(set(entry) - {"BACKEND", "CONFIG"}, key=repr)
        if unknown:
            msg = f"channel layer {alias!r} has unknown key(s) {', '.join(map(repr, unknown))}; expected 'BACKEND' and optionally 'CONFIG'"
            raise InvalidChannelLayerError(msg)
        if "BACKEND" not in entry:
            msg = f"no BACKEND specified for channel layer {alias!r}"
            raise InvalidChannelLayerError(msg)
        cls = _import_backend(alias, entry["BACKEND"])
        config = entry.get("CONFIG", {})
        if config is None:
            config = {}
        if not isinstance(config, Mapping) or not all(
            isinstance(k, str) for k in config
        ):
            msg = f"CONFIG for channel layer {alias!r} is not a mapping with str keys"
            raise InvalidChannelLayerError(msg)
        options = dict(config)
    else:
        msg = f"channel layer {alias!r} is configured with {type(entry).__name__}; expected a URL str or a {{'BACKEND': ..., 'CONFIG': ...}} mapping"
        raise InvalidChannelLayerError(msg)
    _check_options(alias, cls, options)
    spec = _Spec(alias, cls, options)
    spec.pending = spec.build()
    return spec


def _parse_environment(text: str) -> object:
    text = text.strip()
    if not text:
        return {}
    if text[0] not in '{"[':
        return text
    try:
        value: object = json.loads(text)
    except ValueError as exc:
        msg = f"{ENVIRONMENT_VARIABLE} is not valid JSON: {exc}"
        raise InvalidChannelLayerError(msg) from None
    return value


class ChannelLayerManager:
    """The registry of channel layers by alias (Channels' ``ChannelLayerManager``).

    Use the global :data:`channel_layers`. Not thread-safe: configure it and
    use it from the event loop's thread.
    """

    def __init__(self) -> None:
        self._specs: dict[str, _Spec] = {}
        self._configured = False
        self._installed: dict[str, BaseChannelLayer] = {}
        self._open: dict[str, BaseChannelLayer] = {}
        self._opening = False

    # ------------------------------------------------------------------ configuration

    def configure(self, config: object = None) -> None:
        """Replace the configuration.

        Args:
            config: ``{alias: {"BACKEND": ..., "CONFIG": {...}}}``, ``{alias: url}``
                (forms can be mixed), a URL for the default alias, ``{}`` for no
                layers, or None to read ``TRICHANNELS_LAYERS`` now (unset: no layers).

        Layers installed with :meth:`set` are kept.

        Raises:
            InvalidChannelLayerError: naming the alias and the problem (unknown
                scheme, unimportable BACKEND, unknown or invalid CONFIG options,
                invalid JSON in the environment variable).
            RuntimeError: layers are open (inside :func:`open_channel_layers`).
        """
        if self._opening:
            msg = "channel layers cannot be reconfigured while open_channel_layers() is active"
            raise RuntimeError(msg)
        if config is None:
            config = _parse_environment(os.environ.get(ENVIRONMENT_VARIABLE, ""))
        if isinstance(config, str):
            config = {DEFAULT_CHANNEL_LAYER: config}
        if not isinstance(config, Mapping):
            msg = f"channel layer configuration is a {type(config).__name__}; expected a mapping of aliases or a URL"
            raise InvalidChannelLayerError(msg)
        specs = {alias: _parse_entry(alias, entry) for alias, entry in config.items()}
        self._specs = specs
        self._configured = True

    def _ensure_configured(self) -> None:
        if not self._configured:
            self.configure(None)

    @property
    def aliases(self) -> frozenset[str]:
        """Aliases that are configured or installed with :meth:`set`."""
        self._ensure_configured()
        return frozenset(self._specs) | frozenset(self._installed)

    def __contains__(self, alias: object) -> bool:
        """True if ``alias`` is configured or installed."""
        return alias in self.aliases

    # ------------------------------------------------------------------ lookups

    def set(
        self, alias: str, layer: BaseChannelLayer | None
    ) -> BaseChannelLayer | None:
        """Install ``layer`` for ``alias`` (None removes it); return the previous layer or None.

        An installed layer counts as open and takes precedence over the
        configuration; whoever installs it opens and closes it.
        """
        given: object = layer
        if given is not None and not isinstance(given, BaseChannelLayer):
            msg = f"channel layer for alias {alias!r} is a {type(given).__name__}, not a BaseChannelLayer"
            raise InvalidChannelLayerError(msg)
        previous = self._installed.pop(alias, None) or self._open.get(alias)
        if layer is not None:
            self._installed[alias] = layer
        return previous

    def lookup(self, alias: str = DEFAULT_CHANNEL_LAYER) -> BaseChannelLayer | None:
        """The open layer for ``alias``, or None if the alias is not configured at all.

        Raises:
            InvalidChannelLayerError: ``alias`` is configured but its layer is not open.
        """
        layer = self._installed.get(alias) or self._open.get(alias)
        if layer is not None:
            return layer
        self._ensure_configured()
        if alias in self._specs:
            msg = f"channel layer {alias!r} is configured but not open; open it with trichannels.layers.open_channel_layers() (ProtocolTypeRouter's lifespan does) or install one with channel_layers.set()"
            raise InvalidChannelLayerError(msg)
        return None

    def get(self, alias: str = DEFAULT_CHANNEL_LAYER) -> BaseChannelLayer:
        """The open layer for ``alias``; never None.

        Raises:
            InvalidChannelLayerError: ``alias`` is not configured, or not open.
        """
        layer = self.lookup(alias)
        if layer is None:
            msg = f"no channel layer is configured for alias {alias!r}; configure one with trichannels.layers.channel_layers.configure() or {ENVIRONMENT_VARIABLE}"
            raise InvalidChannelLayerError(msg)
        return layer

    # ------------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Mapping[str, BaseChannelLayer]]:
        """Construct and open every configured layer; close them all on exit.

        Aliases installed with :meth:`set` are skipped (their owner opens
        them). Yields ``{alias: layer}`` of what it opened (empty when nothing
        is configured). Entering blocks until every layer is open (their
        background tasks started); exiting closes them in reverse order.
        Exceptions from layers' background tasks propagate out of the
        ``async with``, possibly as an exception group.

        Raises:
            RuntimeError: already open (the context manager cannot be nested).
        """
        self._ensure_configured()
        if self._opening:
            msg = "channel layers are already open; open_channel_layers() cannot be nested"
            raise RuntimeError(msg)
        self._opening = True
        try:
            async with contextlib.AsyncExitStack() as stack:
                opened: dict[str, BaseChannelLayer] = {}
                for alias, spec in self._specs.items():
                    if alias in self._installed:
                        continue
                    # The instance built at configure time is used once; later opens build anew.
                    layer = spec.pending if spec.pending is not None else spec.build()
                    spec.pending = None
                    await stack.enter_async_context(layer)
                    self._open[alias] = layer
                    opened[alias] = layer
                try:
                    yield opened
                finally:
                    self._open.clear()  # unregister before the layers close
        finally:
            self._open.clear()
            self._opening = False


channel_layers: Final = ChannelLayerManager()
"""The global registry (Channels' ``channel_layers``)."""


def get_channel_layer(alias: str = DEFAULT_CHANNEL_LAYER) -> BaseChannelLayer:
    """Return the open channel layer for ``alias`` (not a checkpoint; does not block).

    Unlike Channels, never returns None.

    Raises:
        InvalidChannelLayerError: naming ``alias``, if it is not configured or not open.
    """
    return channel_layers.get(alias)


def open_channel_layers() -> contextlib.AbstractAsyncContextManager[
    Mapping[str, BaseChannelLayer]
]:
    """``async with open_channel_layers():`` opens every configured layer of :data:`channel_layers`.

    A no-op when nothing is configured. See :meth:`ChannelLayerManager.open`.
    """
    return channel_layers.open()
