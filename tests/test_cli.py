"""The trichannels command: argument errors, --help, and a real serve with graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import trio
from trio_websocket import ConnectionClosed

from trichannels.cli import load_app, main
from trichannels.testing import open_websocket


@pytest.mark.parametrize("command", [[], ["serve"], ["worker"], ["demo"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every command has a --help that exits 0 and describes it."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: trichannels")
    assert len(out.splitlines()) > 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["serve", "no_such_module_xyz:app"],
            "cannot import module 'no_such_module_xyz': no such module",
        ),
        (
            ["serve", "trichannels.demo"],
            "APP must look like 'module:attribute', got 'trichannels.demo'",
        ),
        (
            ["serve", "trichannels.demo:nope"],
            "module 'trichannels.demo' has no attribute 'nope'",
        ),
        (
            ["serve", "trichannels.demo:__doc__"],
            "'trichannels.demo:__doc__' is not an ASGI application (got str)",
        ),
        (
            ["serve", "trichannels.demo:application", "--bind", "localhost"],
            "--bind must look like HOST:PORT, got 'localhost'",
        ),
        (
            ["serve", "trichannels.demo:application", "--workers", "0"],
            "--workers must be at least 1, got 0",
        ),
        (
            ["worker", "trichannels.demo:application", "jobs"],
            "no channel layer configured as 'default': pass --layer URL or set TRICHANNELS_LAYERS",
        ),
    ],
)
def test_bad_arguments_give_one_clear_line(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad APP or option prints one line naming the problem and exits 2, no traceback."""
    monkeypatch.delenv("TRICHANNELS_LAYERS", raising=False)
    from trichannels.layers import channel_layers

    channel_layers.configure({})
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"trichannels {argv[0]}: error: {message}\n"


def test_bad_layer_url(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown layer URL scheme is one clear line."""
    assert main(["serve", "trichannels.demo:application", "--layer", "kafka://x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trichannels serve: error: --layer: ")
    assert "kafka" in err
    assert len(err.splitlines()) == 1
    from trichannels.layers import channel_layers

    channel_layers.configure({})


def test_load_app_import_error_in_module(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception raised while importing the user's module is reported, not a traceback."""
    (tmp_path / "broken_app_mod.py").write_text(
        "raise RuntimeError('boom at import')\n"
    )  # type: ignore[operator]
    monkeypatch.syspath_prepend(str(tmp_path))
    from trichannels.cli import UsageError

    with pytest.raises(
        UsageError,
        match=r"^importing module 'broken_app_mod' failed: RuntimeError: boom at import$",
    ):
        load_app("broken_app_mod:app")


@pytest.mark.slow
async def test_serve_demo_then_sigterm_closes_websockets_with_1001() -> None:
    """`trichannels demo` serves for real; SIGTERM closes open WebSockets with 1001 and exits 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRICHANNELS_LAYERS", None)
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block for long
        [
            sys.executable,
            "-m",
            "trichannels.cli",
            "demo",
            "--bind",
            "127.0.0.1:0",
            "--graceful-timeout",
            "5",
            "--ping-interval",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.startswith(b"trichannels "), line
        url = line.decode().rsplit(" on ", 1)[1].strip()
        ws_url = url.replace("http://", "ws://") + "/ws/chat/lobby/"
        with trio.fail_after(15):
            async with open_websocket(ws_url) as ws:
                await ws.send_message(json.dumps({"type": "join", "nick": "ada"}))
                assert json.loads(await ws.get_message())["type"] == "welcome"
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1001
            stopped_at = trio.current_time()
            status = await trio.to_thread.run_sync(proc.wait)
        assert status == 0
        # Nothing was left open, so it must not sit out the whole grace period.
        assert trio.current_time() - stopped_at < 4
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
