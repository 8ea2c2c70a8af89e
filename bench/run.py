# ruff: noqa: RUF001

"""Run the trichannels benchmark suite: every target side by side, interleaved.

    python bench/run.py                         # everything, 3 rounds (~20 min)
    python bench/run.py --quick                 # everything, 1 round, short windows (~3-4 min)
    python bench/run.py --scenarios S1,S5 --rounds 5
    python bench/run.py --targets tri-hypercorn,floor-hypercorn --scenarios S1

Scenarios (see bench/README.md for the method):

  S1  echo: 50 WebSocket clients, closed-loop round trips
  S2  broadcast: 100 clients in one room (tutorial chat, group_send per message), memory
      and Redis layers: max deliveries/s (10 closed-loop senders, each waiting for all 100 copies) and latency at a fixed
      offered 2,000 deliveries/s
  S3  layer alone (no sockets): sequential send+receive pairs/s and group_send to 100
      members; for the Redis layers also through Redis for real (pairs-peer,
      pairs-normal, group-peer). trichannels' Redis pairs on its own "!" channel is
      recorded as pairs-local: it is delivered in-process, with no Redis round trip
  S4  2,000 idle WebSockets: server RSS per connection
  S5  HTTP AsyncHttpConsumer small response under wrk (32 connections)
  S6  20,000 connect/disconnect cycles: connections/s, RSS before/after

Servers are pinned to core 0, load generators and a local Redis server to core 1; per
scenario each round runs every target once, in the same order (A B C A B C ...), each
with its own warm-up before a bounded measured window. Server CPU seconds are read
from /proc/<pid>/stat at the window's edges. Every measurement is appended as a JSON
line to bench/results/<run-id>.jsonl, and bench/report.py turns the results into
bench/README.md (run automatically at the end unless --no-report).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import LoadgenError, run_wrk, run_ws
from s3_layers import (
    PATHS as S3_PATHS,
    ROWS as S3_ROWS,
    TESTS as S3_TESTS,
    applies as s3_applies,
)
from servers import (
    BENCH,
    CHANNELS_VENV,
    PROJECT_VENV,
    RESULTS,
    ROOT,
    SERVER_CPU,
    TARGETS,
    Server,
    library_version,
    machine,
    redis_pinned,
    versions,
)

ALL_SCENARIOS = ["S1", "S2", "S3", "S4", "S5", "S6"]
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")


@dataclass
class Params:
    warmup: float = 2.0
    duration: float = 5.0
    s2_warmup: float = 1.5
    s2_duration: float = 4.0
    s2_fixed_warmup: float = 1.0
    s2_rate: float = 2000.0
    s2_senders: int = 10
    s3_duration: float = 2.0
    s3_warmup: float = 0.5
    s4_clients: int = 2000
    s5_connections: int = 32
    s6_cycles: int = 20000
    s6_warmup_cycles: int = 1000
    s6_concurrency: int = 50

    @classmethod
    def quick(cls) -> Params:
        return cls(
            warmup=1.0,
            duration=2.0,
            s2_warmup=0.7,
            s2_duration=1.5,
            s2_fixed_warmup=0.5,
            s3_duration=0.7,
            s3_warmup=0.2,
            s4_clients=1000,
            s6_cycles=1500,
            s6_warmup_cycles=300,
        )


@dataclass
class Ctx:
    args: argparse.Namespace
    params: Params
    run_id: str
    out: Path
    t0: float = field(default_factory=time.monotonic)
    skipped: dict[str, str] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        el = int(time.monotonic() - self.t0)
        print(f"[{el // 60:2d}:{el % 60:02d}] {msg}", flush=True)

    def record(self, **rec: Any) -> None:
        rec = {
            "run": self.run_id,
            "quick": self.args.quick,
            "time": _dt.datetime.now().isoformat(timespec="seconds"),
            **rec,
        }
        with self.out.open("a") as f:
            f.write(json.dumps(rec) + "\n")


# ------------------------------------------------------------------ helpers


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else (f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}")


def fmt_us(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1000:.1f}ms" if x >= 1000 else f"{x:.0f}µs"


def redis_cleanup() -> None:
    """Delete every key of the benchmark's own Redis database (BENCH_REDIS_URL, db 9 by default)."""
    db = REDIS_URL.rsplit("/", 1)[-1] if REDIS_URL.count("/") >= 3 else "0"
    if db == "0":
        return  # never wipe db 0: other people's tests use it
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["redis-cli", "-n", db, "flushdb"], capture_output=True, timeout=20
        )


def server_env(target_app: str, layer: str) -> dict[str, str]:
    if target_app == "tri":
        return {"TRI_LAYER": layer, "REDIS_URL": REDIS_URL}
    if target_app == "dj":
        return {"DJ_LAYER": layer, "REDIS_URL": REDIS_URL}
    return {}


@dataclass
class Variant:
    """A target with a layer: what one server process runs."""

    target: str
    layer: str  # memory | redis | none

    @property
    def key(self) -> str:
        return (
            self.target
            if self.layer in ("memory", "none")
            else f"{self.target}@{self.layer}"
        )


def start(ctx: Ctx, scenario: str, v: Variant) -> Server | None:
    t = TARGETS[v.target]
    srv = Server(t, env_extra=server_env(t.app, v.layer))
    try:
        srv.start()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        short = next(
            (line for line in reversed(reason) if line.strip()), "failed to start"
        )[:300]
        ctx.log(f"  {v.key}: SKIPPED ({short})")
        ctx.skipped[f"{scenario}:{v.key}"] = short
        ctx.record(
            kind="skip", scenario=scenario, target=v.target, layer=v.layer, reason=short
        )
        return None
    return srv


def ws_window(srv: Server, mode: str, path: str, **opts: Any) -> dict[str, Any]:
    """One loadgen run; the server's CPU is sampled at the measured window's edges."""
    marks: dict[str, float] = {}

    def on_event(name: str, _e: dict[str, Any]) -> None:
        if name in ("measure_start", "measure_end"):
            marks[name] = srv.cpu()

    res = run_ws(mode, srv.url(path), on_event=on_event, **opts)
    if "measure_start" in marks and "measure_end" in marks:
        cpu = marks["measure_end"] - marks["measure_start"]
        res["server_cpu_s"] = cpu
        n = res.get("messages") or res.get("deliveries") or res.get("cycles")
        if n:
            res["server_us_per_op"] = cpu / n * 1e6
        res["server_util"] = cpu / res["wall_s"] if res.get("wall_s") else None
    return res


def interleave(
    ctx: Ctx,
    scenario: str,
    variants: list[Variant],
    rounds: int,
    body: Callable[[Server, Variant, int], None],
    *,
    fresh_per_round: bool = False,
) -> None:
    """Run ``body`` for every variant in every round (A B C A B C ...)."""
    servers: dict[str, Server | None] = {}
    try:
        if not fresh_per_round:
            ctx.log(
                f"{scenario}: starting {len(variants)} servers on core {SERVER_CPU}"
            )
            for v in variants:
                servers[v.key] = start(ctx, scenario, v)
        for r in range(1, rounds + 1):
            for v in variants:
                srv = start(ctx, scenario, v) if fresh_per_round else servers.get(v.key)
                if srv is None:
                    continue
                try:
                    if not srv.alive():
                        raise RuntimeError(f"server died: {srv.log_tail(600)}")
                    body(srv, v, r)
                except (
                    LoadgenError,
                    RuntimeError,
                    subprocess.SubprocessError,
                    OSError,
                ) as exc:
                    msg = str(exc).strip()[:400]
                    ctx.log(f"  [{scenario} r{r}] {v.key}: ERROR {msg}")
                    ctx.record(
                        kind="error",
                        scenario=scenario,
                        target=v.target,
                        layer=v.layer,
                        round=r,
                        error=msg,
                        server_log=srv.log_tail(1500),
                    )
                finally:
                    if fresh_per_round:
                        srv.stop()
    finally:
        for srv in servers.values():
            if srv is not None:
                srv.stop()


def ws_variants(
    ctx: Ctx, layers: Iterable[str], include_floor: bool = True
) -> list[Variant]:
    out: list[Variant] = []
    for layer in layers:
        for name, t in TARGETS.items():
            if t.app == "floor":
                if include_floor and layer == "memory":
                    out.append(Variant(name, "none"))
                continue
            out.append(Variant(name, layer))
    wanted = ctx.args.targets
    if wanted:
        out = [v for v in out if v.target in wanted]
    return out


# ------------------------------------------------------------------ scenarios


def s1(ctx: Ctx) -> None:
    p = ctx.params

    def body(srv: Server, v: Variant, r: int) -> None:
        res = ws_window(
            srv, "echo", "/echo", clients=50, warmup=p.warmup, duration=p.duration
        )
        ctx.record(
            kind="result", scenario="S1", target=v.target, layer=v.layer, round=r, **res
        )
        ctx.log(
            f"  [S1 r{r}] {v.key:18s} {fmt_rate(res['rate']):>7s} msgs/s  p50 {fmt_us(res['p50_us']):>7s} "
            f"p99 {fmt_us(res['p99_us']):>7s}  server {res.get('server_us_per_op', 0):6.1f} µs/msg "
            f"(util {res.get('server_util') or 0:.0%}; client ceiling {fmt_rate(res.get('client_ceiling'))})"
        )

    interleave(ctx, "S1", ws_variants(ctx, ["memory"]), ctx.args.rounds, body)


def s2(ctx: Ctx) -> None:
    p = ctx.params
    layers = ["memory", "redis"] if not ctx.args.no_redis else ["memory"]

    def body(srv: Server, v: Variant, r: int) -> None:
        room = f"/chat/r{r}"
        res = ws_window(
            srv,
            "broadcast",
            room,
            clients=100,
            senders=p.s2_senders,
            warmup=p.s2_warmup,
            duration=p.s2_duration,
        )
        ctx.record(
            kind="result",
            scenario="S2",
            sub="max",
            target=v.target,
            layer=v.layer,
            round=r,
            **res,
        )
        ctx.log(
            f"  [S2 r{r}] {v.key:24s} max {fmt_rate(res['rate']):>7s} deliv/s  p50 {fmt_us(res['p50_us']):>7s} "
            f"p99 {fmt_us(res['p99_us']):>7s}  {res.get('server_us_per_op', 0):5.1f} µs/deliv  lost {res['lost']}"
        )
        res = ws_window(
            srv,
            "broadcast",
            room + "f",
            clients=100,
            rate=p.s2_rate,
            warmup=p.s2_fixed_warmup,
            duration=p.s2_duration,
        )
        ctx.record(
            kind="result",
            scenario="S2",
            sub="fixed",
            target=v.target,
            layer=v.layer,
            round=r,
            **res,
        )
        ctx.log(
            f"  [S2 r{r}] {v.key:24s} @{fmt_rate(p.s2_rate)}/s got {fmt_rate(res['rate']):>6s}  "
            f"p50 {fmt_us(res['p50_us']):>7s} p99 {fmt_us(res['p99_us']):>7s}  lost {res['lost']}"
        )

    if "redis" in layers:
        redis_cleanup()
    try:
        interleave(ctx, "S2", ws_variants(ctx, layers), ctx.args.rounds, body)
    finally:
        if "redis" in layers:
            redis_cleanup()


S3_IMPLS = [
    ("tri-memory", "memory", "trichannels"),
    ("channels-memory", "memory", "Channels"),
    ("tri-redis", "redis", "trichannels"),
    ("channels-redis", "redis", "Channels"),
    ("channels-pubsub", "redis", "Channels"),
]


def s3(ctx: Ctx) -> None:
    p = ctx.params
    impls = [i for i in S3_IMPLS if not (ctx.args.no_redis and i[1] == "redis")]
    redis_cleanup()
    broken: set[tuple[str, str]] = set()
    try:
        for r in range(1, ctx.args.rounds + 1):
            for test in S3_TESTS:
                for impl, _kind, _who in impls:
                    if not s3_applies(impl, test) or (impl, test) in broken:
                        continue
                    python = (
                        (CHANNELS_VENV if impl.startswith("channels") else PROJECT_VENV)
                        / "bin"
                        / "python"
                    )
                    argv = [
                        "taskset",
                        "-c",
                        SERVER_CPU,
                        str(python),
                        str(BENCH / "s3_layers.py"),
                        "--impl",
                        impl,
                        "--test",
                        test,
                        "--duration",
                        str(p.s3_duration),
                        "--warmup",
                        str(p.s3_warmup),
                    ]
                    env = {
                        **os.environ,
                        "REDIS_URL": REDIS_URL,
                        "PYTHONPATH": str(ROOT),
                    }
                    env.pop("VIRTUAL_ENV", None)
                    try:
                        cp = subprocess.run(
                            argv,
                            capture_output=True,
                            text=True,
                            timeout=120,
                            env=env,
                            cwd=ROOT,
                        )
                        res = json.loads(cp.stdout.strip().splitlines()[-1])
                    except (
                        subprocess.SubprocessError,
                        IndexError,
                        json.JSONDecodeError,
                    ) as exc:
                        err = (
                            getattr(exc, "stderr", None)
                            or (cp.stderr if "cp" in locals() else "")
                            or str(exc)
                        )
                        short = (
                            str(err).strip().splitlines()[-1][:300]
                            if str(err).strip()
                            else repr(exc)
                        )
                        ctx.log(f"  [S3 r{r}] {impl} {test}: SKIPPED ({short})")
                        ctx.record(
                            kind="skip",
                            scenario="S3",
                            sub=test,
                            target=impl,
                            layer=_kind,
                            reason=short,
                        )
                        ctx.skipped[f"S3:{impl}:{test}"] = short
                        broken.add((impl, test))
                        continue
                    # The row name (``sub``) comes from s3_layers: our Redis layer's
                    # own-channel pairs are recorded as "pairs-local", not "pairs".
                    sub = res.pop("sub", test)
                    ctx.record(
                        kind="result",
                        scenario="S3",
                        sub=sub,
                        target=impl,
                        layer=_kind,
                        round=r,
                        **res,
                    )
                    ctx.log(
                        f"  [S3 r{r}] {impl:16s} {sub:12s} {fmt_rate(res['rate']):>7s}/s  "
                        f"{res['cpu_us_per_op']:7.1f} µs CPU/op  "
                        f"[{S3_ROWS.get(sub, sub)}; {S3_PATHS.get(res.get('path', ''), '?')}]"
                    )
    finally:
        redis_cleanup()


def s4(ctx: Ctx) -> None:
    p = ctx.params

    def body(srv: Server, v: Variant, r: int) -> None:
        time.sleep(1.0)
        rss0 = srv.rss()
        marks: dict[str, int] = {}

        def on_event(name: str, _e: dict[str, Any]) -> str | None:
            if name == "opened":
                time.sleep(
                    1.5
                )  # let the server settle (handshakes done, buffers allocated)
                marks["rss1"] = srv.rss()
                return "close"
            return None

        res = run_ws(
            "idle",
            srv.url("/echo"),
            on_event=on_event,
            clients=p.s4_clients,
            time_limit=120,
        )
        rss1 = marks["rss1"]
        per = (rss1 - rss0) / p.s4_clients
        ctx.record(
            kind="result",
            scenario="S4",
            target=v.target,
            layer=v.layer,
            round=r,
            clients=p.s4_clients,
            rss_before=rss0,
            rss_open=rss1,
            bytes_per_conn=per,
            opened=res.get("clients"),
        )
        ctx.log(
            f"  [S4 r{r}] {v.key:18s} {per / 1024:6.1f} KB/conn  (RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB)"
        )

    interleave(
        ctx,
        "S4",
        ws_variants(ctx, ["memory"]),
        ctx.args.rounds,
        body,
        fresh_per_round=True,
    )


def s5(ctx: Ctx) -> None:
    p = ctx.params

    def body(srv: Server, v: Variant, r: int) -> None:
        url = srv.url("/", scheme="http")
        run_wrk(url, connections=p.s5_connections, duration=max(1, int(p.warmup)))
        c0 = srv.cpu()
        res = run_wrk(
            url, connections=p.s5_connections, duration=int(max(1, p.duration))
        )
        cpu = srv.cpu() - c0
        res["server_cpu_s"] = cpu
        res["server_us_per_op"] = cpu / max(res["requests"], 1) * 1e6
        res["server_util"] = cpu / res["wall_s"]
        ctx.record(
            kind="result", scenario="S5", target=v.target, layer=v.layer, round=r, **res
        )
        ctx.log(
            f"  [S5 r{r}] {v.key:18s} {fmt_rate(res['rate']):>7s} req/s  p50 {fmt_us(res['p50_us']):>7s} "
            f"p99 {fmt_us(res['p99_us']):>7s}  server {res['server_us_per_op']:6.1f} µs/req  errors {res['errors']}"
        )

    interleave(ctx, "S5", ws_variants(ctx, ["memory"]), ctx.args.rounds, body)


def s6(ctx: Ctx) -> None:
    p = ctx.params
    rounds = ctx.args.rounds
    per_round = p.s6_cycles // rounds
    rss: dict[str, dict[str, int]] = {}

    def body(srv: Server, v: Variant, r: int) -> None:
        if r == 1:
            rss[v.key] = {"rss_start": srv.rss()}
            run_ws(
                "churn",
                srv.url("/echo"),
                cycles=p.s6_warmup_cycles,
                concurrency=p.s6_concurrency,
                time_limit=300,
            )
            time.sleep(1.0)
            rss[v.key]["rss_before"] = srv.rss()
        res = ws_window(
            srv,
            "churn",
            "/echo",
            cycles=per_round,
            concurrency=p.s6_concurrency,
            time_limit=600,
        )
        ctx.record(
            kind="result", scenario="S6", target=v.target, layer=v.layer, round=r, **res
        )
        ctx.log(
            f"  [S6 r{r}] {v.key:18s} {fmt_rate(res['rate']):>7s} conn/s  p99 {fmt_us(res['p99_us']):>7s}  "
            f"server {res.get('server_us_per_op', 0):7.1f} µs/conn  errors {res['errors']}"
        )
        if r == rounds:
            time.sleep(1.0)
            after = srv.rss()
            info = rss[v.key]
            growth = after / info["rss_before"] - 1
            ctx.record(
                kind="result",
                scenario="S6",
                sub="rss",
                target=v.target,
                layer=v.layer,
                round=0,
                cycles=per_round * rounds,
                rss_after=after,
                growth=growth,
                **info,
            )
            ctx.log(
                f"  [S6]    {v.key:18s} RSS {info['rss_start'] / 2**20:.1f} (fresh) -> "
                f"{info['rss_before'] / 2**20:.1f} (after {p.s6_warmup_cycles} warm-up) -> "
                f"{after / 2**20:.1f} MiB after {per_round * rounds} cycles ({growth:+.1%})"
            )

    interleave(ctx, "S6", ws_variants(ctx, ["memory"]), rounds, body)


SCENARIOS: dict[str, Callable[[Ctx], None]] = {
    "S1": s1,
    "S2": s2,
    "S3": s3,
    "S4": s4,
    "S5": s5,
    "S6": s6,
}


# ------------------------------------------------------------------ main


def preflight() -> list[str]:
    problems = []
    if not (CHANNELS_VENV / "bin" / "daphne").exists():
        problems.append("bench/.venv-channels is missing: run bench/setup.sh")
    if not (PROJECT_VENV / "bin" / "uvicorn").exists():
        problems.append("uvicorn is missing from the project venv: run bench/setup.sh")
    if not (BENCH / ".venv-node" / "node_modules" / "ws").exists():
        problems.append("npm ws is missing: run bench/setup.sh")
    return problems


def run_scenarios(ctx: Ctx, scenarios: list[str]) -> None:
    """Run each scenario in turn, recording its start, end and the library version."""
    for s in scenarios:
        lib = library_version()
        ctx.log(f"== {s} == (trichannels {lib})")
        ctx.record(kind="scenario_start", scenario=s, trichannels=lib)
        t = time.monotonic()
        SCENARIOS[s](ctx)
        ctx.record(
            kind="scenario_done",
            scenario=s,
            seconds=time.monotonic() - t,
            loadavg=os.getloadavg(),
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help="comma-separated subset of S1..S6 (default: all)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds per scenario (default 3; 1 with --quick). The README wants at least 3",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run, ~3-4 min: 1 round, 2 s windows, S4 with 1,000 and S6 with 1,500 connections",
    )
    ap.add_argument(
        "--targets", default="", help="comma-separated subset of: " + ", ".join(TARGETS)
    )
    ap.add_argument(
        "--no-redis", action="store_true", help="skip the Redis variants of S2 and S3"
    )
    ap.add_argument(
        "--no-report", action="store_true", help="do not regenerate bench/README.md"
    )
    ap.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the load generator's own ceiling first (default on)",
    )
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; choose from {list(TARGETS)}")
    scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenarios {bad}")
    problems = preflight()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2

    RESULTS.mkdir(parents=True, exist_ok=True)
    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + (
        "-quick" if args.quick else ""
    )
    ctx = Ctx(
        args,
        Params.quick() if args.quick else Params(),
        run_id,
        RESULTS / f"run-{run_id}.jsonl",
    )
    ctx.log(
        f"run {run_id}: scenarios {','.join(scenarios)}, {args.rounds} rounds"
        f"{' (quick)' if args.quick else ''}; raw results -> {ctx.out.relative_to(ROOT)}"
    )
    ctx.record(
        kind="run",
        scenarios=scenarios,
        rounds=args.rounds,
        params=ctx.params.__dict__,
        targets=args.targets or list(TARGETS),
        versions=versions(),
        machine=machine(),
        host=platform.node(),
        loadavg=os.getloadavg(),
        argv=sys.argv[1:],
    )
    if args.ceiling:
        from loadgen import measure_ceiling

        ctx.log("load generator ceiling: node ws client vs bare ASGI echo on uvicorn")
        ceil = measure_ceiling(duration=ctx.params.duration, with_python=not args.quick)
        for client, res in ceil.items():
            ctx.record(kind="ceiling", client=client, **res)
            ctx.log(
                f"  {client:22s} {fmt_rate(res['rate']):>7s} msgs/s at {res.get('client_util', 0):.0%} of its core "
                f"({res['client_us_per_msg']:.1f} µs/msg -> ceiling {fmt_rate(res['client_ceiling'])} msgs/s)"
            )
    with contextlib.ExitStack() as stack:
        if not args.no_redis and {"S2", "S3"} & set(scenarios):
            pinning = stack.enter_context(redis_pinned(REDIS_URL))
            ctx.log(pinning)
            ctx.record(kind="redis_pinning", note=pinning)
        run_scenarios(ctx, scenarios)
    ctx.record(kind="done", seconds=time.monotonic() - ctx.t0, skipped=ctx.skipped)
    ctx.log(
        f"done in {(time.monotonic() - ctx.t0) / 60:.1f} min; results in {ctx.out.relative_to(ROOT)}"
    )
    if ctx.skipped:
        ctx.log("skipped: " + "; ".join(f"{k}: {v}" for k, v in ctx.skipped.items()))
    if not args.no_report:
        report = subprocess.run(
            [str(CHANNELS_VENV / "bin" / "python"), str(BENCH / "report.py")]
        )
        if report.returncode:
            ctx.log("report.py failed")
            return report.returncode
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
