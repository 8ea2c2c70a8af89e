"""Where does an idle WebSocket's memory go?  (S4 follow-up, tracemalloc.)

    python bench/memprofile.py                 # trichannels echo on Hypercorn-trio, 2,000 connections
    python bench/memprofile.py --app floor     # the bare ASGI floor on the same server
    python bench/memprofile.py --clients 500 --frames 12

Runs Hypercorn's trio worker in this process with tracemalloc on, opens the
connections with the Node load generator (idle mode: one echo each, then held),
and prints the Python allocations still alive per connection, grouped by the
innermost frame that belongs to a named part (trichannels module, Hypercorn,
wsproto, h11, trio, anyio, ...), and the top allocation sites. RSS also includes
the allocator's overhead and the kernel's socket buffers, which tracemalloc does
not see; the report gives both.

The report is printed and written to ``results/profiles/mem-<app>.md`` (the numbers
also to ``mem-<app>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

from servers import CLIENT_CPU, free_port, rss_bytes

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]


PARTS = [
    "trichannels",
    "hypercorn",
    "wsproto",
    "h11",
    "trio",
    "anyio",
    "outcome",
    "apps",
    "asyncio",
    "contextlib",
    "json",
    "logging",
]


def part(filename: str) -> str:
    f = filename.replace("\\", "/")
    for p in PARTS:
        if f"/{p}/" in f or f.endswith(f"/{p}.py"):
            if p == "trichannels":
                return "trichannels." + f.split("/trichannels/", 1)[1].removesuffix(
                    ".py"
                ).replace("/", ".")
            return p
    return Path(f).name


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--app", choices=["tri", "floor"], default="tri")
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("TRI_LAYER", "memory")
    tracemalloc.start(args.frames)

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    if args.app == "tri":
        from apps.tri import application
    else:
        from apps.floor import application

    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    report: dict[str, object] = {}

    async def drive(cancel: trio.CancelScope) -> None:
        await trio.sleep(1.0)
        import gc

        gc.collect()
        before = tracemalloc.take_snapshot()
        rss0 = rss_bytes(os.getpid())
        proc = await trio.lowlevel.open_process(
            [
                "taskset",
                "-c",
                CLIENT_CPU,
                "node",
                str(BENCH / "loadgen.js"),
                "--mode",
                "idle",
                "--url",
                f"ws://127.0.0.1:{port}/echo",
                "--clients",
                str(args.clients),
                "--time-limit",
                "120",
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        buf = b""
        while b'"opened"' not in buf:
            chunk = await proc.stdout.receive_some()
            if not chunk:
                raise RuntimeError("load generator ended early: " + buf.decode())
            buf += chunk
        await trio.sleep(1.5)
        gc.collect()
        after = tracemalloc.take_snapshot()
        rss1 = rss_bytes(os.getpid())
        await proc.stdin.send_all(b"close\n")
        await proc.wait()
        stats = after.compare_to(before, "traceback")
        by_part: Counter[str] = Counter()
        by_site: Counter[str] = Counter()
        total = 0
        for st in stats:
            if st.size_diff <= 0:
                continue
            total += st.size_diff
            owner = None
            frames = list(
                reversed(st.traceback)
            )  # tracemalloc lists the oldest frame first
            for fr in frames:
                p = part(fr.filename)
                if p.startswith("trichannels") or p in (
                    "hypercorn",
                    "wsproto",
                    "h11",
                    "apps",
                ):
                    owner = f"{p} ({Path(fr.filename).name}:{fr.lineno})"
                    by_part[p] += st.size_diff
                    break
            if owner is None:
                p = part(frames[0].filename)
                owner = f"{p} ({Path(frames[0].filename).name}:{frames[0].lineno})"
                by_part["(no named owner) " + p] += st.size_diff
            by_site[owner] += st.size_diff
        n = args.clients
        report.update(
            {
                "app": args.app,
                "clients": n,
                "rss_per_conn": (rss1 - rss0) / n,
                "traced_per_conn": total / n,
                "by_part": {k: v / n for k, v in by_part.most_common()},
                "top_sites": {k: v / n for k, v in by_site.most_common(25)},
            }
        )
        cancel.cancel()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drive, nursery.cancel_scope)
            await serve(application, config)

    trio.run(run)
    lines = [
        f"## {report['app']}: {report['clients']} idle WebSockets on Hypercorn-trio (tracemalloc)\n",
        f"RSS per connection {report['rss_per_conn'] / 1024:.1f} KB (inflated by tracemalloc's own bookkeeping); Python allocations alive per connection "
        f"{report['traced_per_conn'] / 1024:.1f} KB\n",
        "| owner (innermost named frame) | bytes per connection |\n|---|---|",
        *(f"| {k} | {v:,.0f} |" for k, v in report["by_part"].items() if v >= 16),
        "\n| allocation site (owner) | bytes per connection |\n|---|---|",
        *(f"| `{k}` | {v:,.0f} |" for k, v in report["top_sites"].items() if v >= 16),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (BENCH / "results" / "profiles").mkdir(parents=True, exist_ok=True)
    (BENCH / "results" / "profiles" / f"mem-{args.app}.json").write_text(
        json.dumps(report, indent=1)
    )
    (BENCH / "results" / "profiles" / f"mem-{args.app}.md").write_text(text)


if __name__ == "__main__":
    main()
