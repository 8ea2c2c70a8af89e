# ruff: noqa: RUF002

"""Load generators: the Node `ws` client (bench/loadgen.js) and wrk, pinned to the client core.

Python drives them; the heavy lifting is done by Node (``ws``) for WebSockets and by
wrk for HTTP, because a Python client on one core is far slower than the servers it
has to saturate (see ``python bench/loadgen.py ceiling``, which measures both).

The generator reports its own CPU time for the measured window, so every result
carries the client's cost per message and the rate it could reach on a whole core
(``client_ceiling``): when that is far above the measured rate, the client was not
the bottleneck.

CLI::

    python bench/loadgen.py ceiling             # the client's ceiling vs bare ASGI echo on uvicorn
    python bench/loadgen.py echo --url ws://127.0.0.1:8000/echo
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import BENCH, CLIENT_CPU, TARGETS, Server

LOADGEN_JS = BENCH / "loadgen.js"


class LoadgenError(RuntimeError):
    pass


def run_ws(
    mode: str,
    url: str,
    *,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    time_limit: float = 300.0,
    **options: Any,
) -> dict[str, Any]:
    """Run loadgen.js once; call ``on_event(name, event)`` as events arrive; return its result."""
    argv = [
        "taskset",
        "-c",
        CLIENT_CPU,
        "node",
        str(LOADGEN_JS),
        "--mode",
        mode,
        "--url",
        url,
        "--time-limit",
        str(time_limit),
    ]
    for key, value in options.items():
        if value is None:
            continue
        argv += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            name = event.get("event")
            if name == "result":
                result = event
            elif name == "error":
                error = event.get("error")
            if on_event is not None:
                answer = on_event(name, event)
                if answer == "close":
                    proc.stdin.write("close\n")
                    proc.stdin.flush()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child, by its pid
            proc.wait()
    if result is None:
        stderr = proc.stderr.read() if proc.stderr else ""
        raise LoadgenError(
            f"loadgen {mode} {url} gave no result (exit {proc.returncode}): {error or ''} {stderr[-800:]}"
        )
    if result.get("client_cpu_s") and result.get("messages", result.get("deliveries")):
        n = result.get("messages") or result.get("deliveries")
        result["client_us_per_msg"] = result["client_cpu_s"] / n * 1e6
        result["client_ceiling"] = n / result["client_cpu_s"]
    return result


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _duration_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(
    url: str, *, connections: int, duration: float, threads: int = 1
) -> dict[str, Any]:
    """Run wrk pinned to the client core; return requests, rate, p50/p99 (µs), errors, client CPU."""
    if shutil.which("wrk") is None:
        raise LoadgenError("wrk is not installed (bench/setup.sh installs it)")
    argv = [
        "taskset",
        "-c",
        CLIENT_CPU,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "5s",
        url,
    ]
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    wall = time.perf_counter() - t0
    out = r.stdout
    res: dict[str, Any] = {"mode": "http", "connections": connections, "wall_s": wall}
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    if not m:
        raise LoadgenError(f"wrk output not understood:\n{out}\n{r.stderr}")
    res["requests"] = int(m.group(1))
    res["rate"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    for pct, key in (("50%", "p50_us"), ("99%", "p99_us")):
        mm = re.search(rf"^\s+{re.escape(pct)}\s+(\S+)", out, re.M)
        res[key] = round(_duration_us(mm.group(1))) if mm else None
    errs = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["errors"] = (sum(map(int, errs.groups())) if errs else 0) + (
        int(non2xx.group(1)) if non2xx else 0
    )
    return res


# ------------------------------------------------------------------ ceiling check


def _trio_websocket_echo(url: str, clients: int, duration: float) -> dict[str, Any]:
    """A pure-Python client (trio + trio-websocket), to show why the suite uses Node."""
    code = r"""
import json, resource, sys, time, trio
from trio_websocket import open_websocket_url
url, clients, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
count = 0; measuring = False
async def client():
    global count
    async with open_websocket_url(url) as ws:
        while True:
            await ws.send_message("x" * 32); await ws.get_message()
            if measuring: count += 1
async def main():
    global measuring
    async with trio.open_nursery() as n:
        for _ in range(clients): n.start_soon(client)
        await trio.sleep(1.0)
        r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter(); measuring = True
        await trio.sleep(duration)
        measuring = False; t1 = time.perf_counter(); r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        print(json.dumps({"messages": count, "rate": count / (t1 - t0), "client_cpu_s": cpu, "wall_s": t1 - t0}))
        n.cancel_scope.cancel()
trio.run(main)
"""
    from servers import PROJECT_VENV

    r = subprocess.run(
        [
            "taskset",
            "-c",
            CLIENT_CPU,
            str(PROJECT_VENV / "bin" / "python"),
            "-c",
            code,
            url,
            str(clients),
            str(duration),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["client_us_per_msg"] = res["client_cpu_s"] / max(res["messages"], 1) * 1e6
    res["client_ceiling"] = res["messages"] / max(res["client_cpu_s"], 1e-9)
    return res


def measure_ceiling(
    duration: float = 5.0, clients: int = 50, with_python: bool = True
) -> dict[str, Any]:
    """Echo against the bare ASGI function on uvicorn (the fastest server here), both clients."""
    out: dict[str, Any] = {}
    with Server(TARGETS["floor-uvicorn"]) as srv:
        marks: dict[str, float] = {}

        def on_event(name: str, _event: dict[str, Any]) -> None:
            if name in ("measure_start", "measure_end"):
                marks[name] = srv.cpu()

        node = run_ws(
            "echo",
            srv.url("/echo"),
            on_event=on_event,
            clients=clients,
            warmup=2,
            duration=duration,
        )
        node["server_cpu_s"] = marks["measure_end"] - marks["measure_start"]
        node["server_util"] = node["server_cpu_s"] / node["wall_s"]
        node["client_util"] = node["client_cpu_s"] / node["wall_s"]
        out["node-ws"] = node
        if with_python:
            c0 = srv.cpu()
            py = _trio_websocket_echo(srv.url("/echo"), clients, duration)
            py["server_cpu_s"] = (
                srv.cpu() - c0
            )  # includes its 1 s warm-up: an upper bound
            py["client_util"] = py["client_cpu_s"] / py["wall_s"]
            out["python-trio-websocket"] = py
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser(
        "ceiling",
        help="measure the load generator's own ceiling against bare ASGI echo on uvicorn",
    )
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument(
        "--no-python", action="store_true", help="skip the trio-websocket comparison"
    )
    for mode in ("echo", "broadcast", "churn", "idle"):
        p = sub.add_parser(
            mode, help=f"run loadgen.js in {mode} mode against a running server"
        )
        p.add_argument("--url", required=True)
        p.add_argument("--clients", type=int)
        p.add_argument("--warmup", type=float)
        p.add_argument("--duration", type=float)
        p.add_argument("--senders", type=int)
        p.add_argument("--rate", type=float)
        p.add_argument("--cycles", type=int)
        p.add_argument("--concurrency", type=int)
    args = ap.parse_args()
    if args.cmd == "ceiling":
        print(
            json.dumps(
                measure_ceiling(args.duration, with_python=not args.no_python), indent=2
            )
        )
        return
    opts = {
        k: v for k, v in vars(args).items() if k not in ("cmd", "url") and v is not None
    }
    print(json.dumps(run_ws(args.cmd, args.url, **opts), indent=2))


if __name__ == "__main__":
    main()
