"""The pytest plugin: ``channel_layer`` and ``live_server_factory``, used here and through pytester."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest
import trio

from trichannels.demo import make_application
from trichannels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer
from trichannels.testing import WebsocketCommunicator, open_websocket
from trichannels.testing.pytest_plugin import LiveServerFactory

pytest_plugins = ["pytester"]


def test_registered_as_pytest11_entry_point() -> None:
    """Installing trichannels registers the plugin, so no conftest import is needed."""
    names = {
        ep.name: ep.value
        for ep in entry_points(group="pytest11")
        if ep.name == "trichannels"
    }
    assert names == {"trichannels": "trichannels.testing.pytest_plugin"}


async def test_channel_layer_is_installed_as_default(
    channel_layer: InMemoryChannelLayer,
) -> None:
    """The fixture's layer is open and is what get_channel_layer() returns."""
    assert isinstance(channel_layer, InMemoryChannelLayer)
    assert get_channel_layer() is channel_layer
    await channel_layer.send("probe", {"type": "x"})
    assert await channel_layer.receive("probe") == {"type": "x"}


@pytest.mark.channel_layer(capacity=1)
async def test_channel_layer_marker_options(
    channel_layer: InMemoryChannelLayer,
) -> None:
    """Options given with the channel_layer marker reach the layer."""
    assert channel_layer.capacity == 1


async def test_channel_layer_with_communicator(
    channel_layer: InMemoryChannelLayer,
) -> None:
    """A consumer tested with a communicator uses the fixture's layer."""
    app = make_application()
    with trio.fail_after(5):
        async with WebsocketCommunicator(app, "/ws/chat/plugin/") as comm:
            assert (await comm.connect())[0]
            await comm.send_json_to({"type": "join", "nick": "ada"})
            assert (await comm.receive_json_from())["type"] == "welcome"
            stats = channel_layer.statistics()
            assert stats.groups == 1


@pytest.mark.slow
async def test_live_server_factory_serves_the_demo(
    channel_layer: InMemoryChannelLayer, live_server_factory: LiveServerFactory
) -> None:
    """Two servers from the factory share the test's layer; a message crosses them."""
    app = make_application()
    one = await live_server_factory(app)
    # One process has one registry of layers, opened by one lifespan at a time.
    two = await live_server_factory(app, lifespan=False)
    assert one.port != two.port
    assert live_server_factory.servers == [one, two]
    with trio.fail_after(10):
        async with (
            open_websocket(one.ws_url + "/ws/chat/lobby/") as ada,
            open_websocket(two.ws_url + "/ws/chat/lobby/") as bob,
        ):
            await ada.send_message(json.dumps({"type": "join", "nick": "ada"}))
            assert json.loads(await ada.get_message())["type"] == "welcome"
            await bob.send_message(json.dumps({"type": "join", "nick": "bob"}))
            assert json.loads(await bob.get_message())["type"] == "welcome"
            await bob.send_message(json.dumps({"type": "say", "text": "hi ada"}))
            seen = [json.loads(await ada.get_message()) for _ in range(2)]
            assert [m["type"] for m in seen] == ["joined", "message"]
            assert seen[1]["text"] == "hi ada"


_PYTESTER_INI = """
[pytest]
trio_mode = true
addopts = --strict-markers -p no:cacheprovider
filterwarnings = error
"""

_PYTESTER_TESTS = """
import json

import pytest
import trio

from trichannels.generic.websocket import AsyncWebsocketConsumer
from trichannels.layers import channel_layers, get_channel_layer
from trichannels.testing import open_websocket

SEEN = []


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data.upper())


async def test_layer(channel_layer):
    assert get_channel_layer() is channel_layer
    SEEN.append(channel_layer)


@pytest.mark.channel_layer(expiry=3)
async def test_second_layer_is_fresh(channel_layer):
    assert channel_layer is not SEEN[0]
    assert channel_layer.expiry == 3
    SEEN.append(channel_layer)


def test_layers_removed_and_closed():
    assert "default" not in channel_layers
    assert all(layer.closed for layer in SEEN)


async def test_live_server(live_server_factory):
    server = await live_server_factory(Echo.as_asgi(), lifespan=False)
    with trio.fail_after(10):
        async with open_websocket(server.ws_url + "/") as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "HELLO"


async def test_server_stops_after_the_test(live_server_factory):
    server = await live_server_factory(Echo.as_asgi(), lifespan=False)
    SEEN.append(server)


async def test_port_is_closed():
    with pytest.raises(OSError):
        stream = await trio.open_tcp_stream("127.0.0.1", SEEN[-1].port)
        await stream.aclose()


@pytest.mark.channel_layer("positional")
async def test_bad_marker(channel_layer):
    pass
"""


@pytest.mark.slow
def test_fixtures_in_a_fresh_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a project with only pytest-trio, the fixtures appear without any conftest."""
    monkeypatch.delenv("TRICHANNELS_LAYERS", raising=False)
    pytester.makeini(_PYTESTER_INI)
    pytester.makepyfile(test_app=_PYTESTER_TESTS)
    result = pytester.runpytest_subprocess("-v")
    # pytest-trio runs async fixtures inside the test, so a fixture error fails the test.
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_bad_marker FAILED*",
            "*TypeError: the channel_layer marker takes keyword options only, got ('positional',)",
        ]
    )


def test_no_layer_left_behind() -> None:
    """The fixture-using tests above left nothing installed as "default"."""
    assert channel_layers.lookup("default") is None
