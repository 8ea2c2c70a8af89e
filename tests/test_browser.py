"""The chat demo in a real headless Chromium, driven by Selenium.

The demo is served in-process by :func:`~trichannels.testing.live_server`
(real Hypercorn, trio worker) on the in-memory layer that the plugin's
``channel_layer`` fixture installs as "default" (and removes after). Two browser sessions
(two ChromeDriver sessions, so two separate browser contexts with their own
profiles) join one room, talk, see the member count, then lose their
sockets when the test closes them server-side and must reconnect by
themselves. Screenshots are written under the test's ``tmp_path``.

Selenium blocks, so every browser call runs in a worker thread
(``trio.to_thread.run_sync``) while the server keeps running in the test's
trio task; every wait is an explicit ``WebDriverWait``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/browser`` installs
them): without them the test skips loudly, and under ``CI=true`` it fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
import trio

from trichannels.consumer import close_websockets
from trichannels.demo import make_application
from trichannels.layers import InMemoryChannelLayer
from trichannels.testing import live_server

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMEDRIVER: Final = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--window-size=1000,760",
)
WAIT: Final = 20.0
"""Seconds any single browser wait may take (the whole test has 60)."""

T = TypeVar("T")

pytestmark = pytest.mark.slow


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        message = (
            f"BROWSER TEST NOT RUN: missing {', '.join(missing)}; the demo page is UNTESTED "
            "in a real browser (install with: apt-get install -y chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking Selenium code in a worker thread; the trio server keeps serving."""
    # abandon_on_cancel: fail_after() fires even while a wait is in progress; the
    # abandoned call ends when its own WebDriverWait expires or the driver quits.
    return await trio.to_thread.run_sync(partial(fn, *args), abandon_on_cancel=True)


class ChatPage:
    """One browser session on the demo page (blocking methods; call them via in_thread)."""

    def __init__(self, driver: Any, name: str) -> None:
        self.driver = driver
        self.name = name

    def _wait(self, condition: Callable[[Any], Any], what: str) -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, WAIT, poll_frequency=0.05).until(
                condition
            )
        except TimeoutException:
            status = self.driver.find_element("id", "status").text
            messages = self.driver.find_element("id", "messages").text
            msg = f"{self.name}: timed out waiting for {what}; status={status!r}, messages={messages!r}"
            raise AssertionError(msg) from None

    def status(self) -> str:
        return str(self.driver.find_element("id", "status").text)

    def join(self, url: str, nick: str, room: str) -> None:
        self.driver.get(url)
        self._wait(lambda d: d.find_element("id", "nick").is_displayed(), "the page")
        self.driver.find_element("id", "nick").send_keys(nick)
        room_input = self.driver.find_element("id", "room")
        room_input.clear()
        room_input.send_keys(room)
        self.driver.find_element("id", "join").click()
        self.wait_connected(nick)

    def wait_connected(self, nick: str) -> None:
        self._wait(
            lambda d: (
                d.find_element("id", "status").text == f"connected as {nick}"
                and d.find_element("id", "send").is_enabled()
            ),
            f"'connected as {nick}'",
        )

    def say(self, text: str) -> None:
        self._wait(
            lambda d: d.find_element("id", "send").is_enabled(), "the send button"
        )
        self.driver.find_element("id", "text").send_keys(text)
        self.driver.find_element("id", "send").click()

    def messages(self) -> list[tuple[str, str]]:
        rows = self.driver.execute_script(
            "return [...document.querySelectorAll('#messages li.message')].map("
            "(li) => [li.querySelector('.nick').textContent, li.querySelector('.text').textContent]);"
        )
        return [(str(nick), str(text)) for nick, text in rows]

    def wait_message(self, nick: str, text: str) -> None:
        self._wait(lambda d: (nick, text) in self.messages(), f"{nick}: {text!r}")

    def wait_members(self, count: int) -> None:
        self._wait(
            lambda d: d.find_element("id", "members").text == str(count),
            f"member count {count}",
        )

    def reconnects(self) -> int:
        return int(self.driver.execute_script("return state.reconnects;"))

    def wait_reconnected(self, nick: str, before: int) -> None:
        self._wait(lambda d: self.reconnects() > before, "the socket to drop")
        self.wait_connected(nick)

    def screenshot(self, path: Path) -> None:
        assert self.driver.save_screenshot(str(path)), path


def _start_driver(profile: Path, log: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(str(CHROMEDRIVER), log_output=str(log))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


@contextlib.asynccontextmanager
async def open_page(tmp_path: Path, name: str) -> AsyncIterator[ChatPage]:
    """A fresh browser session with its own profile; quit however the block ends."""
    profile = tmp_path / f"profile-{name}"
    profile.mkdir()
    driver = await trio.to_thread.run_sync(
        _start_driver, profile, tmp_path / f"chromedriver-{name}.log"
    )
    try:
        yield ChatPage(driver, name)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(WAIT):
            await trio.to_thread.run_sync(driver.quit)


async def test_demo_in_two_browsers_chats_and_reconnects(
    channel_layer: InMemoryChannelLayer, tmp_path: Path
) -> None:
    """Two Chromium sessions chat through the demo, see 2 members, and reconnect after a server-side close."""
    _require_browser()
    room = "browsers"
    shots: list[Path] = []
    with trio.fail_after(60):
        async with (
            live_server(make_application(history=20)) as server,
            open_page(tmp_path, "ada") as ada,
            open_page(tmp_path, "bob") as bob,
        ):
            await in_thread(ada.join, server.url + "/", "ada", room)
            await in_thread(bob.join, server.url + "/", "bob", room)
            await in_thread(ada.wait_members, 2)
            await in_thread(bob.wait_members, 2)

            await in_thread(ada.say, "hello from ada")
            await in_thread(bob.wait_message, "ada", "hello from ada")
            await in_thread(bob.say, "hi ada")
            await in_thread(ada.wait_message, "bob", "hi ada")
            for page in (ada, bob):
                shots.append(tmp_path / f"{page.name}-chatting.png")
                await in_thread(page.screenshot, shots[-1])

            # Kill both sockets from the server side; each page must reconnect by itself.
            before = {
                page.name: await in_thread(page.reconnects) for page in (ada, bob)
            }
            assert close_websockets(1001, "test: server-side close") == 2
            async with trio.open_nursery() as nursery:
                for page in (ada, bob):
                    nursery.start_soon(
                        in_thread, page.wait_reconnected, page.name, before[page.name]
                    )
            await in_thread(ada.wait_members, 2)
            await in_thread(bob.wait_members, 2)

            await in_thread(bob.say, "still here after the reconnect")
            await in_thread(ada.wait_message, "bob", "still here after the reconnect")
            # Nothing was lost or duplicated on either page by the reconnect.
            expected = [
                ("ada", "hello from ada"),
                ("bob", "hi ada"),
                ("bob", "still here after the reconnect"),
            ]
            await in_thread(bob.wait_message, "bob", "still here after the reconnect")
            for page in (ada, bob):
                assert await in_thread(page.messages) == expected
                shots.append(tmp_path / f"{page.name}-reconnected.png")
                await in_thread(page.screenshot, shots[-1])
                # Leave the page so the server has no connection left to wait for.
                await in_thread(page.driver.get, "about:blank")

    for shot in shots:
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), shot
        assert len(data) > 1000, shot
