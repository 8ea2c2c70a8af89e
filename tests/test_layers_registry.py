"""Tests for the channel-layer registry (trichannels.layers) and the base layer's lifecycle."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import trio
import trio.testing

import trichannels.layers
from trichannels.exceptions import InvalidChannelLayerError
from trichannels.layers import (
    BaseChannelLayer,
    ChannelLayerManager,
    InMemoryChannelLayer,
    get_channel_layer,
    open_channel_layers,
)
from trichannels.layers.base import LayerStatistics
from trichannels.types import Message

MEMORY = "trichannels.layers.memory.InMemoryChannelLayer"


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> ChannelLayerManager:
    """A fresh manager installed as the global one, with TRICHANNELS_LAYERS unset."""
    monkeypatch.delenv("TRICHANNELS_LAYERS", raising=False)
    fresh = ChannelLayerManager()
    monkeypatch.setattr(trichannels.layers, "channel_layers", fresh)
    return fresh


# -- configuration forms --------------------------------------------------------------


def test_configure_channels_dict(manager: ChannelLayerManager) -> None:
    """A CHANNEL_LAYERS-shaped dict configures aliases with their options."""
    manager.configure(
        {
            "default": {"BACKEND": MEMORY, "CONFIG": {"capacity": 7, "expiry": 5}},
            "other": {"BACKEND": InMemoryChannelLayer},
            "none": {"BACKEND": MEMORY, "CONFIG": None},
        }
    )
    assert manager.aliases == {"default", "other", "none"}
    assert "default" in manager
    assert "missing" not in manager


def test_configure_urls(manager: ChannelLayerManager) -> None:
    """memory:// URLs, with query parameters as typed options, per alias or bare for the default."""
    manager.configure("memory://?capacity=9&expiry=1.5&serializer=msgpack")
    assert manager.aliases == {"default"}
    manager.configure({"default": "memory://", "b": "memory:///"})
    assert manager.aliases == {"default", "b"}


async def test_url_options_reach_the_layer(manager: ChannelLayerManager) -> None:
    """Options from the URL query are passed to the layer with JSON scalar types."""
    manager.configure({"default": "memory://?capacity=9&expiry=1.5"})
    async with open_channel_layers() as opened:
        layer = opened["default"]
        assert (layer.capacity, layer.expiry) == (9, 1.5)


def test_redis_urls_import_the_redis_layer_lazily(
    manager: ChannelLayerManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis:// and rediss:// map to trichannels.layers.redis.RedisChannelLayer(hosts=[url])."""
    module = types.ModuleType("trichannels.layers.redis")
    module.RedisChannelLayer = _FakeRedis  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "trichannels.layers.redis", module)
    _FakeRedis.built.clear()
    manager.configure(
        {"default": "redis://:s3cret@localhost:6379/0", "tls": "rediss://h:1/2"}
    )
    assert _FakeRedis.built == [
        ["redis://:s3cret@localhost:6379/0"],
        ["rediss://h:1/2"],
    ]


class _FakeRedis(BaseChannelLayer):
    """Stands in for the Redis layer: records its hosts."""

    built: list[list[str]] = []

    def __init__(self, *, hosts: list[str]) -> None:
        super().__init__()
        _FakeRedis.built.append(hosts)

    async def send(self, channel: str, message: Message) -> None:
        raise NotImplementedError

    async def receive(self, channel: str) -> dict[str, Any]:
        raise NotImplementedError

    async def new_channel(self, prefix: str = "specific.") -> str:
        raise NotImplementedError

    async def group_add(self, group: str, channel: str) -> None:
        raise NotImplementedError

    async def group_discard(self, group: str, channel: str) -> None:
        raise NotImplementedError

    async def group_send(self, group: str, message: Message) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    def statistics(self) -> LayerStatistics:
        return LayerStatistics()


# -- environment variable ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "aliases"),
    [
        ("memory://", {"default"}),
        ("  memory://?capacity=3  ", {"default"}),
        (
            '{"default": "memory://", "b": {"BACKEND": "' + MEMORY + '"}}',
            {"default", "b"},
        ),
        ('"memory://"', {"default"}),
        ("", set()),
        ("{}", set()),
    ],
)
def test_environment_variable(
    manager: ChannelLayerManager,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    aliases: set[str],
) -> None:
    """TRICHANNELS_LAYERS (JSON of either form, or a bare URL) is read on first use."""
    monkeypatch.setenv("TRICHANNELS_LAYERS", value)
    assert manager.aliases == aliases


def test_environment_variable_invalid_json(
    manager: ChannelLayerManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invalid JSON in TRICHANNELS_LAYERS is an InvalidChannelLayerError naming the variable."""
    monkeypatch.setenv("TRICHANNELS_LAYERS", '{"default": memory://}')
    with pytest.raises(
        InvalidChannelLayerError,
        match=r"^TRICHANNELS_LAYERS is not valid JSON: Expecting value: line 1 column 13 \(char 12\)$",
    ):
        manager.lookup("default")


def test_explicit_configuration_wins_over_environment(
    manager: ChannelLayerManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once configure() was called, the environment variable is not read."""
    manager.configure({})
    monkeypatch.setenv("TRICHANNELS_LAYERS", "memory://")
    assert manager.lookup("default") is None
    manager.configure(None)  # None: read it now
    assert manager.aliases == {"default"}


# -- bad configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "pattern"),
    [
        (
            "foo://x",
            r"^URL 'foo://x' for channel layer 'default' has unknown scheme 'foo'; expected memory://, redis:// or rediss://$",
        ),
        (
            {"a": "ftp://u:pw@h/"},
            r"^URL 'ftp://u:\*\*\*@h/' for channel layer 'a' has unknown scheme 'ftp'; expected memory://, redis:// or rediss://$",
        ),
        (
            {"a": "memory://host/path"},
            r"^URL 'memory://host/path' for channel layer 'a' must be 'memory://' with optional \?option=value parameters$",
        ),
        (
            {"a": "memory://?hosts=1"},
            r"^CONFIG for channel layer 'a' has unknown option\(s\) 'hosts' for InMemoryChannelLayer \(known: capacity, channel_capacity, channel_delivery, clock, expiry, group_expiry, serializer\)$",
        ),
        (
            {"a": "memory://?capacity=-3"},
            r"^channel layer 'a': capacity is -3, which is not an int >= 1$",
        ),
        (
            {"a": {"BACKEND": "nope.Layer"}},
            r"^cannot import BACKEND 'nope\.Layer' for channel layer 'a': No module named 'nope'$",
        ),
        (
            {"a": {"BACKEND": "trichannels.layers.memory.Missing"}},
            r"^cannot import BACKEND 'trichannels\.layers\.memory\.Missing' for channel layer 'a': module 'trichannels\.layers\.memory' has no attribute 'Missing'$",
        ),
        (
            {"a": {"BACKEND": "collections.OrderedDict"}},
            r"^BACKEND 'collections\.OrderedDict' for channel layer 'a' is not a BaseChannelLayer subclass$",
        ),
        (
            {"a": {"BACKEND": "nodots"}},
            r"^BACKEND 'nodots' for channel layer 'a' is not a dotted path to a class$",
        ),
        ({"a": {"CONFIG": {}}}, r"^no BACKEND specified for channel layer 'a'$"),
        (
            {"a": {"BACKEND": MEMORY, "ROUTING": "x"}},
            r"^ROUTING key found for channel layer 'a'; it is not used \(route with ChannelNameRouter instead\)$",
        ),
        (
            {"a": {"BACKEND": MEMORY, "TEST_CONFIG": {}}},
            r"^channel layer 'a' has unknown key\(s\) 'TEST_CONFIG'; expected 'BACKEND' and optionally 'CONFIG'$",
        ),
        (
            {"a": {"BACKEND": MEMORY, "CONFIG": {"hosts": ["x"]}}},
            r"^CONFIG for channel layer 'a' has unknown option\(s\) 'hosts' for InMemoryChannelLayer \(known: .*\)$",
        ),
        (
            {"a": {"BACKEND": MEMORY, "CONFIG": [1]}},
            r"^CONFIG for channel layer 'a' is not a mapping with str keys$",
        ),
        (
            {
                "a": {
                    "BACKEND": MEMORY,
                    "CONFIG": {"channel_delivery": {"x": "at-least-once"}},
                }
            },
            r"^channel layer 'a': InMemoryChannelLayer supports only at-most-once delivery, but channel_delivery asks at-least-once for .*$",
        ),
        (
            {"a": 5},
            r"^channel layer 'a' is configured with int; expected a URL str or a \{'BACKEND': \.\.\., 'CONFIG': \.\.\.\} mapping$",
        ),
        ({"": "memory://"}, r"^channel layer alias '' is not a non-empty str$"),
        (
            ["memory://"],
            r"^channel layer configuration is a list; expected a mapping of aliases or a URL$",
        ),
    ],
)
def test_bad_configuration(
    manager: ChannelLayerManager, config: Any, pattern: str
) -> None:
    """Bad configuration fails at configure time, naming the alias and the problem; the old configuration stays."""
    manager.configure({"kept": "memory://"})
    with pytest.raises(InvalidChannelLayerError, match=pattern) as info:
        manager.configure(config)
    assert isinstance(info.value, ValueError)
    assert manager.aliases == {"kept"}


# -- set / lookup / get ---------------------------------------------------------------------


def test_lookup_and_get(manager: ChannelLayerManager) -> None:
    """lookup: None if unconfigured, error if configured but closed; get never returns None."""
    manager.configure({"default": "memory://"})
    assert manager.lookup("other") is None
    with pytest.raises(
        InvalidChannelLayerError,
        match=r"^channel layer 'default' is configured but not open; open it with trichannels\.layers\.open_channel_layers\(\) \(ProtocolTypeRouter's lifespan does\) or install one with channel_layers\.set\(\)$",
    ):
        manager.lookup()
    with pytest.raises(
        InvalidChannelLayerError,
        match=r"^channel layer 'default' is configured but not open",
    ):
        get_channel_layer()
    with pytest.raises(
        InvalidChannelLayerError,
        match=r"^no channel layer is configured for alias 'other'; configure one with trichannels\.layers\.channel_layers\.configure\(\) or TRICHANNELS_LAYERS$",
    ):
        get_channel_layer("other")


def test_set_installs_and_returns_previous(manager: ChannelLayerManager) -> None:
    """set() installs a caller-owned layer (counted as open), returning the previous one, as in Channels."""
    first, second = InMemoryChannelLayer(), InMemoryChannelLayer()
    assert manager.set("default", first) is None
    assert get_channel_layer() is first
    assert manager.set("default", second) is first
    assert manager.lookup("default") is second
    assert "default" in manager
    assert manager.set("default", None) is second
    assert manager.lookup("default") is None
    with pytest.raises(
        InvalidChannelLayerError,
        match=r"^channel layer for alias 'x' is a dict, not a BaseChannelLayer$",
    ):
        manager.set("x", {})  # type: ignore[arg-type]


def test_set_overrides_configuration(manager: ChannelLayerManager) -> None:
    """An installed layer takes precedence over a configured alias."""
    manager.configure({"default": "memory://"})
    mine = InMemoryChannelLayer()
    manager.set("default", mine)
    assert manager.lookup() is mine


# -- open_channel_layers ----------------------------------------------------------------------


async def test_open_channel_layers(manager: ChannelLayerManager) -> None:
    """open_channel_layers opens every configured layer, registers it, and closes it on exit."""
    manager.configure(
        {
            "default": "memory://",
            "second": {"BACKEND": MEMORY, "CONFIG": {"capacity": 2}},
        }
    )
    async with open_channel_layers() as opened:
        assert set(opened) == {"default", "second"}
        layer = get_channel_layer()
        assert layer is opened["default"]
        assert manager.lookup("second") is opened["second"]
        await layer.send("a", {"type": "x"})
        assert await layer.receive("a") == {"type": "x"}
    assert layer.closed
    assert opened["second"].closed
    with pytest.raises(InvalidChannelLayerError, match=r"configured but not open"):
        get_channel_layer()
    async with open_channel_layers() as again:
        assert again["default"] is not layer  # a fresh instance each time
        assert not again["default"].closed


async def test_open_channel_layers_without_configuration(
    manager: ChannelLayerManager,
) -> None:
    """With nothing configured, open_channel_layers is a no-op."""
    async with open_channel_layers() as opened:
        assert opened == {}
        assert manager.lookup() is None


async def test_open_channel_layers_skips_installed_and_refuses_nesting(
    manager: ChannelLayerManager,
) -> None:
    """Installed aliases are not opened again; nesting and reconfiguring while open are refused."""
    manager.configure({"default": "memory://", "other": "memory://"})
    mine = InMemoryChannelLayer()
    manager.set("default", mine)
    async with open_channel_layers() as opened:
        assert set(opened) == {"other"}
        assert get_channel_layer() is mine
        with pytest.raises(
            RuntimeError,
            match=r"^channel layers are already open; open_channel_layers\(\) cannot be nested$",
        ):
            async with open_channel_layers():
                pass  # pragma: no cover
        with pytest.raises(
            RuntimeError,
            match=r"^channel layers cannot be reconfigured while open_channel_layers\(\) is active$",
        ):
            manager.configure({})
        assert (
            manager.set("other", None) is opened["other"]
        )  # the open one is reported as previous
    assert not mine.closed


class BackgroundLayer(BaseChannelLayer):
    """A layer that needs opening and runs a background task while open."""

    requires_open = True
    events: list[str] = []
    fail_open = False

    def __init__(self, *, fail_open: bool = False) -> None:
        super().__init__()
        self.fail_open = fail_open

    @contextlib.asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        if self.fail_open:
            msg = "cannot connect"
            raise OSError(msg)
        async with anyio.create_task_group() as tg:
            await tg.start(self._background)
            yield
            tg.cancel_scope.cancel()

    async def _background(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        BackgroundLayer.events.append("started")
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            BackgroundLayer.events.append("stopped")

    async def _aclose(self) -> None:
        BackgroundLayer.events.append("aclose")

    async def send(self, channel: str, message: Message) -> None:
        self._check_open()
        await anyio.lowlevel.checkpoint()

    async def receive(self, channel: str) -> dict[str, Any]:
        raise NotImplementedError

    async def new_channel(self, prefix: str = "specific.") -> str:
        raise NotImplementedError

    async def group_add(self, group: str, channel: str) -> None:
        raise NotImplementedError

    async def group_discard(self, group: str, channel: str) -> None:
        raise NotImplementedError

    async def group_send(self, group: str, message: Message) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    def statistics(self) -> LayerStatistics:
        return LayerStatistics()


async def test_background_tasks_live_inside_open(manager: ChannelLayerManager) -> None:
    """A layer's background task starts before open returns and stops after aclose(), on exit."""
    BackgroundLayer.events.clear()
    manager.configure({"default": {"BACKEND": f"{__name__}.BackgroundLayer"}})
    async with open_channel_layers():
        assert BackgroundLayer.events == ["started"]
        await get_channel_layer().send("a", {"type": "x"})
    assert BackgroundLayer.events == ["started", "aclose", "stopped"]


async def test_requires_open_layer_refuses_use_before_opening() -> None:
    """A layer that needs a background task refuses operations until opened."""
    layer = BackgroundLayer()
    with pytest.raises(
        InvalidChannelLayerError,
        match=r"^BackgroundLayer is not open; use 'async with layer:' or trichannels\.layers\.open_channel_layers\(\)$",
    ):
        await layer.send("a", {"type": "x"})


async def test_failed_open_closes_what_was_opened(manager: ChannelLayerManager) -> None:
    """If one layer fails to open, the ones opened before it are closed and nothing stays registered."""
    BackgroundLayer.events.clear()
    manager.configure(
        {
            "first": {"BACKEND": f"{__name__}.BackgroundLayer"},
            "second": {
                "BACKEND": f"{__name__}.BackgroundLayer",
                "CONFIG": {"fail_open": True},
            },
        }
    )
    with pytest.raises(OSError, match=r"^cannot connect$"):
        async with open_channel_layers():
            pass  # pragma: no cover
    assert BackgroundLayer.events == ["started", "aclose", "stopped"]
    with pytest.raises(InvalidChannelLayerError, match=r"configured but not open"):
        manager.lookup("first")
    manager.configure({"first": {"BACKEND": f"{__name__}.BackgroundLayer"}})
    async with open_channel_layers() as opened:  # usable again afterwards
        assert set(opened) == {"first"}


def test_open_channel_layers_neutral(
    backend: str, manager: ChannelLayerManager
) -> None:
    """open_channel_layers works on asyncio too."""
    BackgroundLayer.events.clear()
    manager.configure(
        {"default": "memory://", "bg": {"BACKEND": f"{__name__}.BackgroundLayer"}}
    )

    async def body() -> None:
        async with open_channel_layers():
            layer = get_channel_layer()
            await layer.send("a", {"type": "x"})
            assert await layer.receive("a") == {"type": "x"}

    anyio.run(body, backend=backend)
    assert BackgroundLayer.events == ["started", "aclose", "stopped"]


class SlowCloseLayer(BackgroundLayer):
    """A layer whose graceful close takes ``delay`` seconds."""

    close_timeout = 2.0

    def __init__(self, *, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def _aclose(self) -> None:
        await anyio.sleep(self.delay)
        BackgroundLayer.events.append("closed gracefully")


async def test_aclose_graceful_part_is_shielded_and_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """aclose() finishes its graceful part despite the caller's cancellation, but never beyond close_timeout."""
    BackgroundLayer.events.clear()
    layer = SlowCloseLayer(delay=1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await layer.aclose()
    assert scope.cancelled_caught
    assert BackgroundLayer.events == ["closed gracefully"]
    assert trio.current_time() == 1
    stuck = SlowCloseLayer(delay=100)
    await stuck.aclose()
    assert trio.current_time() == 3
    assert stuck.closed
    assert BackgroundLayer.events == ["closed gracefully"]
