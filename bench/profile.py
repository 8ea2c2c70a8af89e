"""Profile one target under one scenario's load with py-spy, and say which part owns the time.

    python bench/profile.py tri-hypercorn S1
    python bench/profile.py tri-hypercorn S2 --layer redis --seconds 20
    python bench/profile.py floor-hypercorn S5

The server runs pinned to core 0 and the load generator to core 1, as in run.py;
py-spy (from bench/.venv-channels) samples the server's pid (``--nonblocking``, so
the server is not paused) while the load runs. Output in bench/results/profiles/:

* ``<name>.svg``  -- flame graph,
* ``<name>.txt``  -- collapsed stacks (py-spy ``raw`` format; not committed),
* ``<name>.md``   -- the summary printed below: CPU samples by part (the package of the
  innermost Python frame: Hypercorn, wsproto, h11, trio, anyio, trichannels modules,
  uvicorn, websockets, asyncio, the app ...), the top functions by self time, and
  trichannels' functions by inclusive time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import run_wrk, run_ws
from servers import CHANNELS_VENV, RESULTS, TARGETS, Server

PROFILES = RESULTS / "profiles"
REDIS_URL = "redis://127.0.0.1:6379/10"

PARTS = [
    ("/trichannels/", None),  # refined below by module
    ("/hypercorn/", "Hypercorn"),
    ("/wsproto/", "wsproto"),
    ("/h11/", "h11"),
    ("/h2/", "h2"),
    ("/trio/", "trio"),
    ("/anyio/", "anyio"),
    ("/outcome/", "trio"),
    ("/uvicorn/", "uvicorn"),
    ("/websockets/", "websockets"),
    ("/httptools/", "httptools"),
    ("/uvloop/", "asyncio/uvloop"),
    ("/asyncio/", "asyncio/uvloop"),
    ("/channels_redis/", "channels_redis"),
    ("/channels/", "Channels"),
    ("/daphne/", "daphne"),
    ("/twisted/", "Twisted"),
    ("/autobahn/", "autobahn"),
    ("/django/", "Django"),
    ("/asgiref/", "asgiref"),
    ("/coredis/", "coredis (Redis client)"),
    ("/redis/", "redis-py"),
    ("/msgpack/", "msgpack"),
    ("/bench/apps/", "benchmark app"),
    ("/apps/", "benchmark app"),
    ("/json/", "json"),
    ("/logging/", "logging"),
    ("/socket.py", "socket (stdlib)"),
    ("/selectors.py", "selectors (stdlib)"),
    ("/contextlib.py", "contextlib (stdlib)"),
    ("/copy.py", "copy (stdlib)"),
    ("/threading.py", "threading (stdlib)"),
    ("/concurrent/", "concurrent.futures (stdlib)"),
]

# Libraries that do work on behalf of whoever called them: their time is charged to the
# innermost frame of some other part ("owner"); samples with no such frame belong to the
# event loop itself (scheduler, I/O polling).
GENERIC = (
    "trio",
    "anyio",
    "asyncio/uvloop",
    "contextlib (stdlib)",
    "json",
    "logging",
    "socket (stdlib)",
    "selectors (stdlib)",
    "copy (stdlib)",
    "threading (stdlib)",
    "concurrent.futures (stdlib)",
    "other:",
)

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def part_of(filename: str) -> str:
    filename = "/" + filename.lstrip(
        "/"
    )  # py-spy shortens paths to the sys.path-relative part
    for needle, name in PARTS:
        if needle in filename:
            if name is None:
                mod = (
                    filename.split("/trichannels/", 1)[1]
                    .removesuffix(".py")
                    .replace("/", ".")
                )
                return f"trichannels.{mod}"
            return name
    return "other: " + Path(filename).name


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for fr in stack.split(";"):
            m = FRAME.match(fr.strip())
            if m:
                frames.append((m.group("func"), m.group("file")))
            else:
                frames.append((fr.strip(), ""))
        stacks.append((frames, int(count)))
    return stacks


def summarize(path: Path, title: str, top: int = 25) -> str:
    """Markdown summary of a py-spy ``raw`` file."""
    stacks = parse(path)
    total = sum(c for _, c in stacks) or 1
    by_part: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_tri: Counter[str] = Counter()
    incl_part: Counter[str] = Counter()
    owner: Counter[str] = Counter()
    owner_fn: Counter[str] = Counter()
    owner_total: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        func, file = frames[-1]
        for i in range(len(frames) - 1, -1, -1):
            f, fl = frames[i]
            p = part_of(fl)
            if (
                not p.startswith(GENERIC)
                and not fl.startswith(
                    ("hypercorn/__main__", "hypercorn/run.py", "hypercorn/trio/run.py")
                )
                and fl != "hypercorn"
            ):
                owner[p] += count
                if p.startswith("trichannels") or p == "benchmark app":
                    callee = frames[i + 1][0] if i + 1 < len(frames) else "(own code)"
                    owner_fn[f"{p}.{f} -> {callee}"] += count
                    owner_total[f"{p}.{f}"] += count
                break
        else:
            owner["event loop itself (scheduler, I/O wait)"] += count
        by_part[part_of(file)] += count
        self_fn[f"{func} ({file})"] += count
        seen_fn, seen_part = set(), set()
        for f, fl in frames:
            p = part_of(fl)
            if p.startswith("trichannels.") and (f, p) not in seen_fn:
                seen_fn.add((f, p))
                incl_tri[f"{p}.{f}"] += count
            if p not in seen_part:
                seen_part.add(p)
                incl_part[p] += count
    out = [
        f"### {title}\n",
        f"{total} samples of the server process (CPU only; idle waits excluded).\n",
        "**Self time by part** (package of the innermost Python frame; C calls count for their caller):\n",
        "| part | self % | inclusive % |",
        "|---|---|---|",
    ]
    for p, c in by_part.most_common():
        if c / total < 0.005:
            continue
        out.append(
            f"| {p} | {100 * c / total:.1f} | {100 * incl_part[p] / total:.1f} |"
        )
    out += [
        "",
        "**By owner**: time in generic libraries (trio, anyio, asyncio, contextlib, json, ...) charged to the "
        "innermost caller from a named part, e.g. a socket send made by Hypercorn counts for Hypercorn, a memory-"
        "channel hop made by the consumer counts for `trichannels.consumer`:\n",
        "| owner | % |",
        "|---|---|",
    ]
    for p, c in owner.most_common():
        if c / total >= 0.005:
            out.append(f"| {p} | {100 * c / total:.1f} |")
    if owner_total:
        out += [
            "",
            "**trichannels-owned time by innermost trichannels function:**\n",
            "| function | % |",
            "|---|---|",
        ]
        for f, c in owner_total.most_common(12):
            if c / total >= 0.004:
                out.append(f"| `{f}` | {100 * c / total:.1f} |")
    if owner_fn:
        out += [
            "",
            "**trichannels-owned time by (innermost trichannels function -> the library call it made):**\n",
            "| where | % |",
            "|---|---|",
        ]
        for f, c in owner_fn.most_common(25):
            if c / total >= 0.004:
                out.append(f"| `{f}` | {100 * c / total:.1f} |")
    out += [
        "",
        f"**Top {top} functions by self time:**\n",
        "| function | self % |",
        "|---|---|",
    ]
    for f, c in self_fn.most_common(top):
        out.append(f"| `{f}` | {100 * c / total:.1f} |")
    if incl_tri:
        out += [
            "",
            "**trichannels functions by inclusive time** (≥ 1 %):\n",
            "| function | inclusive % |",
            "|---|---|",
        ]
        for f, c in incl_tri.most_common(30):
            if c / total >= 0.01:
                out.append(f"| `{f}` | {100 * c / total:.1f} |")
    return "\n".join(out) + "\n"


def load(srv: Server, scenario: str, seconds: float, stop: threading.Event) -> None:
    """Apply the scenario's load for about ``seconds`` (after a short warm-up)."""
    if scenario == "S1":
        run_ws("echo", srv.url("/echo"), clients=50, warmup=1, duration=seconds)
    elif scenario == "S2":
        run_ws(
            "broadcast",
            srv.url("/chat/prof"),
            clients=100,
            senders=10,
            warmup=1,
            duration=seconds,
        )
    elif scenario == "S2fixed":
        run_ws(
            "broadcast",
            srv.url("/chat/prof"),
            clients=100,
            rate=2000,
            warmup=1,
            duration=seconds,
        )
    elif scenario == "S5":
        run_wrk(srv.url("/", scheme="http"), connections=32, duration=int(seconds) + 1)
    elif scenario == "S6":
        deadline = time.monotonic() + seconds + 1
        while time.monotonic() < deadline and not stop.is_set():
            run_ws("churn", srv.url("/echo"), cycles=500, concurrency=50)
    else:
        raise SystemExit(f"unknown scenario {scenario}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("target", choices=list(TARGETS))
    ap.add_argument("scenario", choices=["S1", "S2", "S2fixed", "S5", "S6"])
    ap.add_argument("--layer", default="memory", choices=["memory", "redis"])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = ap.parse_args()
    t = TARGETS[args.target]
    env = (
        {"TRI_LAYER": args.layer, "REDIS_URL": REDIS_URL}
        if t.app == "tri"
        else ({"DJ_LAYER": args.layer, "REDIS_URL": REDIS_URL} if t.app == "dj" else {})
    )
    PROFILES.mkdir(parents=True, exist_ok=True)
    name = f"{args.target}-{args.scenario}" + (
        "-redis" if args.layer == "redis" and t.app != "floor" else ""
    )
    pyspy = CHANNELS_VENV / "bin" / "py-spy"
    with Server(t, env_extra=env) as srv:
        stop = threading.Event()
        th = threading.Thread(
            target=load,
            args=(srv, args.scenario, args.seconds + 1.5, stop),
            daemon=True,
        )
        th.start()
        time.sleep(1.5)  # connect + warm-up before sampling
        common = [
            "--pid",
            str(srv.pid),
            "--duration",
            str(int(args.seconds)),
            "--rate",
            str(args.rate),
            "--nonblocking",
        ]
        raw = PROFILES / f"{name}.txt"
        subprocess.run(
            [str(pyspy), "record", *common, "--format", "raw", "-o", str(raw)],
            check=True,
            capture_output=True,
        )
        stop.set()
        th.join(60)
        # A second, shorter pass for the flame graph (py-spy writes one format per run).
        th2 = threading.Thread(
            target=load,
            args=(srv, args.scenario, 6.5, stop := threading.Event()),
            daemon=True,
        )
        th2.start()
        time.sleep(1.5)
        svg_args = [
            "--pid",
            str(srv.pid),
            "--duration",
            "5",
            "--rate",
            str(args.rate),
            "--nonblocking",
        ]
        subprocess.run(
            [
                str(pyspy),
                "record",
                *svg_args,
                "--format",
                "flamegraph",
                "-o",
                str(PROFILES / f"{name}.svg"),
            ],
            check=False,
            capture_output=True,
        )
        stop.set()
        th2.join(60)
    text = summarize(
        raw,
        f"{t.label} — {args.scenario}"
        + (f" ({args.layer} layer)" if t.app != "floor" else ""),
    )
    (PROFILES / f"{name}.md").write_text(text)
    print(text)
    print(f"flame graph: {PROFILES / (name + '.svg')}")


if __name__ == "__main__":
    if (
        len(sys.argv) >= 3 and sys.argv[1] == "--summarize"
    ):  # re-summarize a saved raw file
        print(
            summarize(
                Path(sys.argv[2]),
                sys.argv[3] if len(sys.argv) > 3 else Path(sys.argv[2]).stem,
            )
        )
    else:
        main()
