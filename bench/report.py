# ruff: noqa: RUF001

"""Regenerate bench/README.md (and bench/results/summary.png) from bench/results/run-*.jsonl.

    bench/.venv-channels/bin/python bench/report.py            # latest full run of each scenario
    bench/.venv-channels/bin/python bench/report.py --run ID   # one run only
    bench/.venv-channels/bin/python bench/report.py --include-quick

For each scenario the newest run that measured it is used (quick runs only with
--include-quick, or when no full run exists). Every ratio is computed inside that one
run: the ratio of the two targets' medians, with the range of the per-round ratios
(A and B were measured back to back in each round). The hand-written analysis in
bench/findings.md is included as is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from s3_layers import PATHS as S3_PATHS, ROWS as S3_ROWS, path_of as s3_path_of

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"
FINDINGS = BENCH / "findings.md"
METHOD = BENCH / "method.md"

LABELS = {
    "tri-hypercorn": "trichannels / Hypercorn-trio",
    "tri-uvicorn": "trichannels / uvicorn",
    "dj-daphne": "Channels / daphne",
    "dj-uvicorn": "Channels / uvicorn",
    "floor-hypercorn": "bare ASGI / Hypercorn-trio",
    "floor-uvicorn": "bare ASGI / uvicorn",
    "tri-memory": "trichannels InMemoryChannelLayer",
    "channels-memory": "Channels InMemoryChannelLayer",
    "tri-redis": "trichannels RedisChannelLayer (streams)",
    "channels-redis": "channels_redis core RedisChannelLayer",
    "channels-pubsub": "channels_redis RedisPubSubChannelLayer",
}
ORDER = list(LABELS)


def normalise(rec: dict[str, Any]) -> dict[str, Any]:
    """Bring records of older runs to the current row names.

    Before the S3 rows were split, our Redis layer's own-channel pairs were recorded
    as ``pairs`` like everyone else's, although they never reach Redis (the layer
    delivers a send to its own ``!`` channel in-process): that row is ``pairs-local``.
    S3 records carry ``path`` (see ``s3_layers.path_of``) since then.
    """
    if rec.get("scenario") != "S3" or not rec.get("sub"):
        return rec
    if rec.get("target") == "tri-redis" and rec["sub"] == "pairs":
        rec = {**rec, "sub": "pairs-local"}
    if "path" not in rec:
        rec = {**rec, "path": s3_path_of(rec.get("target", ""), rec["sub"])}
    return rec


def redis_note(recs: list[dict[str, Any]]) -> str:
    """Where the run's Redis server ran (``redis_pinned`` records it since run 20261122-151113)."""
    note = next((r["note"] for r in recs if r.get("kind") == "redis_pinning"), None)
    if note is None:
        return "Redis was not pinned (this run predates the pinning)."
    return note.rstrip(".") + "."


def load_runs() -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(RESULTS.glob("run-*.jsonl")):
        recs = []
        for line in path.read_text().splitlines():
            try:
                recs.append(normalise(json.loads(line)))
            except json.JSONDecodeError:
                continue
        if recs:
            runs[path.stem.removeprefix("run-")] = recs
    return runs


def pick(
    runs: dict[str, list[dict[str, Any]]],
    scenario: str,
    include_quick: bool,
    only: str | None,
) -> str | None:
    cands = [
        rid
        for rid, recs in runs.items()
        if any(
            r.get("kind") == "result" and r.get("scenario") == scenario for r in recs
        )
    ]
    if only:
        return only if only in cands else None
    full = [rid for rid in cands if not rid.endswith("-quick")]
    if full and not include_quick:
        return sorted(full)[-1]
    return sorted(cands)[-1] if cands else None


@dataclass
class Stat:
    values: list[float]

    @property
    def med(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def lo(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def hi(self) -> float | None:
        return max(self.values) if self.values else None


def group(
    recs: Iterable[dict[str, Any]], scenario: str, sub: str | None = None
) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in recs:
        if (
            r.get("kind") == "result"
            and r.get("scenario") == scenario
            and r.get("sub") == sub
        ):
            out[(r["target"], r["layer"])].append(r)
    return out


def stat(rows: list[dict], key: str) -> Stat:
    return Stat([r[key] for r in rows if r.get(key) is not None])


def k(x: float | None, unit: str = "") -> str:
    if x is None:
        return "–"
    if abs(x) >= 100_000:
        return f"{x / 1000:.0f}k{unit}"
    if abs(x) >= 1000:
        return f"{x / 1000:.1f}k{unit}"
    return f"{x:.0f}{unit}"


def ms(us: float | None) -> str:
    if us is None:
        return "–"
    if us >= 10_000:
        return f"{us / 1000:.0f} ms"
    if us >= 1000:
        return f"{us / 1000:.1f} ms"
    return f"{us:.0f} µs"


def rng(s: Stat, f=k) -> str:
    if s.med is None:
        return "–"
    if len(s.values) == 1:
        return f(s.med)
    return f"{f(s.med)} ({f(s.lo)}–{f(s.hi)})"


def sort_key(tl: tuple[str, str]) -> tuple[int, str]:
    t, layer = tl
    return (ORDER.index(t) if t in ORDER else 99, layer)


# ------------------------------------------------------------------ targets


@dataclass
class Ratio:
    scenario: str
    sub: str | None
    metric: str  # rate | p99_us | bytes_per_conn
    num: tuple[str, str]
    den: tuple[str, str]
    op: str  # ">=" or "<="
    threshold: float
    label: str
    den_sub: str | None = None  # the denominator's row, when it is not ``sub``
    info: bool = False  # shown for information only: no goal, no verdict


TRI_HYP, TRI_UV = "tri-hypercorn", "tri-uvicorn"
RATIOS = [
    Ratio(
        "S1",
        None,
        "rate",
        (TRI_HYP, "memory"),
        ("floor-hypercorn", "none"),
        ">=",
        0.85,
        "S1 echo msgs/s: trichannels / floor, Hypercorn-trio",
    ),
    Ratio(
        "S1",
        None,
        "rate",
        (TRI_UV, "memory"),
        ("floor-uvicorn", "none"),
        ">=",
        0.85,
        "S1 echo msgs/s: trichannels / floor, uvicorn",
    ),
    Ratio(
        "S5",
        None,
        "rate",
        (TRI_HYP, "memory"),
        ("floor-hypercorn", "none"),
        ">=",
        0.85,
        "S5 HTTP req/s: trichannels / floor, Hypercorn-trio",
    ),
    Ratio(
        "S5",
        None,
        "rate",
        (TRI_UV, "memory"),
        ("floor-uvicorn", "none"),
        ">=",
        0.85,
        "S5 HTTP req/s: trichannels / floor, uvicorn",
    ),
    Ratio(
        "S2",
        "max",
        "rate",
        (TRI_HYP, "memory"),
        ("floor-hypercorn", "none"),
        ">=",
        0.80,
        "S2 broadcast deliveries/s (memory): trichannels / floor, Hypercorn-trio",
    ),
    Ratio(
        "S2",
        "max",
        "rate",
        (TRI_UV, "memory"),
        ("floor-uvicorn", "none"),
        ">=",
        0.80,
        "S2 broadcast deliveries/s (memory): trichannels / floor, uvicorn",
    ),
    Ratio(
        "S1",
        None,
        "rate",
        (TRI_HYP, "memory"),
        ("dj-daphne", "memory"),
        ">=",
        1.4,
        "S1 echo: trichannels-Hypercorn-trio / Channels-daphne",
    ),
    Ratio(
        "S2",
        "max",
        "rate",
        (TRI_HYP, "memory"),
        ("dj-daphne", "memory"),
        ">=",
        2.3,
        "S2 broadcast (memory): trichannels-Hypercorn-trio / Channels-daphne",
    ),
    Ratio(
        "S2",
        "max",
        "rate",
        (TRI_HYP, "redis"),
        ("dj-daphne", "redis"),
        ">=",
        3.0,
        "S2 broadcast (Redis): trichannels-Hypercorn-trio / Channels-daphne",
    ),
    Ratio(
        "S4",
        None,
        "bytes_per_conn",
        (TRI_HYP, "memory"),
        ("dj-daphne", "memory"),
        "<=",
        0.75,
        "S4 bytes per idle connection: trichannels-Hypercorn-trio / Channels-daphne",
    ),
    Ratio(
        "S2",
        "fixed",
        "p99_us",
        (TRI_HYP, "memory"),
        ("dj-daphne", "memory"),
        "<=",
        0.5,
        "S2 p99 at 2,000 deliveries/s (memory): trichannels-Hypercorn-trio / Channels-daphne",
    ),
    Ratio(
        "S2",
        "fixed",
        "p99_us",
        (TRI_HYP, "redis"),
        ("dj-daphne", "redis"),
        "<=",
        0.5,
        "S2 p99 at 2,000 deliveries/s (Redis): trichannels-Hypercorn-trio / Channels-daphne",
    ),
    Ratio(
        "S1",
        None,
        "rate",
        (TRI_UV, "memory"),
        ("dj-uvicorn", "memory"),
        ">=",
        2.0,
        "S1 echo: trichannels-uvicorn / Channels-uvicorn",
    ),
    Ratio(
        "S2",
        "max",
        "rate",
        (TRI_UV, "memory"),
        ("dj-uvicorn", "memory"),
        ">=",
        2.0,
        "S2 broadcast (memory): trichannels-uvicorn / Channels-uvicorn",
    ),
    Ratio(
        "S2",
        "max",
        "rate",
        (TRI_UV, "redis"),
        ("dj-uvicorn", "redis"),
        ">=",
        2.0,
        "S2 broadcast (Redis): trichannels-uvicorn / Channels-uvicorn",
    ),
    Ratio(
        "S5",
        None,
        "rate",
        (TRI_UV, "memory"),
        ("dj-uvicorn", "memory"),
        ">=",
        2.0,
        "S5 HTTP: trichannels-uvicorn / Channels-uvicorn",
    ),
    Ratio(
        "S3",
        "group",
        "rate",
        ("tri-memory", "memory"),
        ("channels-memory", "memory"),
        ">=",
        3.0,
        "S3 in-memory group deliveries/s: ours / Channels'",
    ),
    Ratio(
        "S3",
        "pairs",
        "rate",
        ("tri-memory", "memory"),
        ("channels-memory", "memory"),
        ">=",
        1.0,
        "S3 in-memory send+receive pairs/s: ours / Channels'",
    ),
    Ratio(
        "S3",
        "pairs-peer",
        "rate",
        ("tri-redis", "redis"),
        ("channels-redis", "redis"),
        ">=",
        5.0,
        "S3 Redis pairs/s through Redis, `!` channel of another instance (`pairs-peer`): ours / channels_redis core",
    ),
    Ratio(
        "S3",
        "pairs-normal",
        "rate",
        ("tri-redis", "redis"),
        ("channels-redis", "redis"),
        ">=",
        5.0,
        "S3 Redis pairs/s through Redis, plain worker channel (`pairs-normal`): ours / channels_redis core",
    ),
    Ratio(
        "S3",
        "group-peer",
        "rate",
        ("tri-redis", "redis"),
        ("channels-redis", "redis"),
        ">=",
        2.0,
        "S3 Redis group deliveries/s through Redis, members in another instance (`group-peer`): ours / channels_redis core",
    ),
    Ratio(
        "S3",
        "pairs-local",
        "rate",
        ("tri-redis", "redis"),
        ("channels-redis", "redis"),
        ">=",
        0,
        "S3 Redis pairs/s, sender's own `!` channel: ours in process, **no Redis round trip** (`pairs-local`) / channels_redis core through Redis (`pairs`)",
        den_sub="pairs",
        info=True,
    ),
    Ratio(
        "S3",
        "group",
        "rate",
        ("tri-redis", "redis"),
        ("channels-redis", "redis"),
        ">=",
        0,
        "S3 Redis group deliveries/s, sender's own members (`group`): ours one round trip per group_send, copies in process / channels_redis core every copy through Redis",
        info=True,
    ),
]

CPU_METRIC = {
    "S1": "server_us_per_op",
    "S2": "server_us_per_op",
    "S5": "server_us_per_op",
    "S3": "cpu_us_per_op",
}


def by_round(rows: list[dict], key: str) -> dict[int, float]:
    return {r["round"]: r[key] for r in rows if r.get(key) is not None}


def eval_ratio(recs: list[dict], ratio: Ratio) -> dict[str, Any] | None:
    g = group(recs, ratio.scenario, ratio.sub)
    gd = g if ratio.den_sub is None else group(recs, ratio.scenario, ratio.den_sub)
    a, b = g.get(ratio.num), gd.get(ratio.den)
    if not a or not b:
        return None
    sa, sb = stat(a, ratio.metric), stat(b, ratio.metric)
    if not sa.med or not sb.med:
        return None
    value = sa.med / sb.med
    ra, rb = by_round(a, ratio.metric), by_round(b, ratio.metric)
    per_round = [ra[r] / rb[r] for r in sorted(set(ra) & set(rb)) if rb[r]]
    met = value >= ratio.threshold if ratio.op == ">=" else value <= ratio.threshold
    out: dict[str, Any] = {
        "value": value,
        "per_round": per_round,
        "met": met,
        "n": len(per_round),
    }
    cpu_key = CPU_METRIC.get(ratio.scenario)
    if ratio.metric == "rate" and cpu_key:
        ca, cb = stat(a, cpu_key), stat(b, cpu_key)
        if ca.med and cb.med:
            out["cpu_value"] = (
                cb.med / ca.med
            )  # higher is better, like a throughput ratio
            out["cpu_met"] = out["cpu_value"] >= ratio.threshold
    return out


# ------------------------------------------------------------------ tables


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def label(t: str, layer: str) -> str:
    base = LABELS.get(t, t)
    return (
        f"{base} ({layer})"
        if layer == "redis" and not t.startswith(("tri-redis", "channels-"))
        else base
    )


def ws_table(recs: list[dict], scenario: str, sub: str | None, unit: str) -> str:
    g = group(recs, scenario, sub)
    rows = []
    for key in sorted(g, key=sort_key):
        rs = g[key]
        extra = ""
        lost = sum(r.get("lost") or 0 for r in rs)
        errs = sum(r.get("errors") or 0 for r in rs)
        if lost or errs:
            extra = f"lost {lost}, errors {errs}"
        cpu = stat(rs, "server_us_per_op")
        cap = Stat([1e6 / v for v in cpu.values if v])
        util = stat(rs, "server_util")
        ceil = stat(rs, "client_ceiling")
        rows.append(
            [
                label(*key),
                rng(stat(rs, "rate")),
                rng(stat(rs, "p50_us"), ms),
                rng(stat(rs, "p99_us"), ms),
                rng(cpu, lambda x: f"{x:.1f}"),
                k(cap.med),
                f"{util.med:.0%}" if util.med else "–",
                k(ceil.med) if ceil.med else "–",
                extra or "–",
            ]
        )
    return table(
        [
            "target",
            f"{unit} median (range)",
            "p50",
            "p99",
            "server µs CPU per op",
            f"{unit} per server core",
            "server core used",
            "client ceiling",
            "loss / errors",
        ],
        rows,
    )


S3_ORDER = ["pairs", "pairs-local", "pairs-peer", "pairs-normal", "group", "group-peer"]


def s3_table(recs: list[dict]) -> str:
    rows = []
    subs = {r.get("sub") for r in recs if r.get("scenario") == "S3"}
    for test in S3_ORDER + sorted(s for s in subs - set(S3_ORDER) if s):
        unit = "deliveries/s" if test.startswith("group") else "pairs/s"
        g = group(recs, "S3", test)
        for key in sorted(g, key=sort_key):
            rs = g[key]
            path = rs[0].get("path", "")
            how = S3_PATHS.get(path, path or "–")
            rows.append(
                [
                    LABELS.get(key[0], key[0]),
                    f"`{test}`",
                    S3_ROWS.get(test, test).replace("!", "`!`"),
                    f"**{how}**" if path == "local" else how,
                    rng(stat(rs, "rate")) + " " + unit,
                    rng(stat(rs, "cpu_us_per_op"), lambda x: f"{x:.1f}"),
                ]
            )
    return table(
        [
            "layer",
            "row",
            "channel",
            "path of each message",
            "rate median (range)",
            "CPU µs per op",
        ],
        rows,
    )


def s4_table(recs: list[dict]) -> str:
    g = group(recs, "S4")
    rows = []
    for key in sorted(g, key=sort_key):
        rs = g[key]
        rows.append(
            [
                label(*key),
                rng(stat(rs, "bytes_per_conn"), lambda x: f"{x / 1024:.1f} KB"),
                rng(stat(rs, "rss_before"), lambda x: f"{x / 2**20:.1f} MiB"),
                rng(stat(rs, "rss_open"), lambda x: f"{x / 2**20:.1f} MiB"),
                str(rs[0].get("clients")),
            ]
        )
    return table(
        [
            "target",
            "RSS per idle connection",
            "RSS before",
            "RSS with all open",
            "connections",
        ],
        rows,
    )


def s6_table(recs: list[dict]) -> str:
    g = group(recs, "S6")
    rss = group(recs, "S6", "rss")
    rows = []
    for key in sorted(set(g) | set(rss), key=sort_key):
        rs = g.get(key, [])
        m = rss.get(key, [{}])[0]
        growth = m.get("growth")
        verdict = (
            "–" if growth is None else ("met" if abs(growth) <= 0.05 else "**missed**")
        )
        cpu = stat(rs, "server_us_per_op")
        rows.append(
            [
                label(*key),
                rng(stat(rs, "rate")),
                rng(stat(rs, "p99_us"), ms),
                rng(cpu, lambda x: f"{x:.0f}"),
                f"{m['rss_start'] / 2**20:.1f}" if m.get("rss_start") else "–",
                f"{m['rss_before'] / 2**20:.1f}" if m.get("rss_before") else "–",
                f"{m['rss_after'] / 2**20:.1f}" if m.get("rss_after") else "–",
                f"{growth:+.1%}" if growth is not None else "–",
                str(m.get("cycles", "–")),
                verdict,
                str(sum(r.get("errors") or 0 for r in rs)),
            ]
        )
    return table(
        [
            "target",
            "connections/s",
            "p99 cycle",
            "server µs per conn",
            "RSS fresh MiB",
            "RSS after warm-up MiB",
            "RSS after churn MiB",
            "growth",
            "cycles",
            "≤ 5 %",
            "errors",
        ],
        rows,
    )


# ------------------------------------------------------------------ plot


def plot(chosen: dict[str, tuple[str, list[dict]]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        ("S1", None, "rate", "S1 echo: msgs/s"),
        ("S2", "max", "rate", "S2 broadcast: deliveries/s"),
        ("S2", "fixed", "p99_us", "S2 p99 at 2k deliveries/s (ms, log)"),
        ("S5", None, "rate", "S5 HTTP: req/s"),
        ("S1", None, "server_us_per_op", "S1 server CPU µs per message"),
        ("S2", "max", "server_us_per_op", "S2 server CPU µs per delivery"),
    ]
    panels = [p for p in panels if p[0] in chosen]
    if not panels:
        return False
    cols = 2
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.6 * rows), squeeze=False)
    colors = {"tri": "#1f77b4", "dj": "#d62728", "floor": "#7f7f7f"}
    for ax, (sc, sub, metric, title) in zip(axes.flat, panels, strict=False):
        recs = chosen[sc][1]
        g = group(recs, sc, sub)
        keys = sorted(g, key=sort_key)
        names, meds, lo, hi, cs = [], [], [], [], []
        for key in keys:
            s = stat(g[key], metric)
            if s.med is None:
                continue
            scale = 1000 if metric == "p99_us" else 1
            names.append(key[0] + ("@redis" if key[1] == "redis" else ""))
            meds.append(s.med / scale)
            lo.append((s.med - s.lo) / scale)
            hi.append((s.hi - s.med) / scale)
            cs.append(colors[key[0].split("-")[0]])
        ax.barh(range(len(names)), meds, xerr=[lo, hi], color=cs, capsize=3)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if metric == "p99_us":
            ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "trichannels vs Django Channels vs bare ASGI (median, whiskers = range of rounds)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ------------------------------------------------------------------ README


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", help="use only this run id")
    ap.add_argument("--include-quick", action="store_true")
    ap.add_argument("--output", default=str(README))
    args = ap.parse_args()
    runs = load_runs()
    chosen: dict[str, tuple[str, list[dict]]] = {}
    for sc in ("S1", "S2", "S3", "S4", "S5", "S6"):
        rid = pick(runs, sc, args.include_quick, args.run)
        if rid:
            chosen[sc] = (rid, runs[rid])
    if not chosen:
        raise SystemExit(
            "no results in bench/results/ yet: run python bench/run.py first"
        )

    used = sorted({rid for rid, _ in chosen.values()})
    header = next((r for r in runs[used[-1]] if r.get("kind") == "run"), {})
    out: list[str] = []
    out.append("# trichannels benchmarks\n")
    out.append(
        "<!-- generated by bench/report.py from bench/results/*.jsonl; edit bench/findings.md or bench/method.md instead -->\n"
    )
    out.append(
        "Side-by-side benchmarks of trichannels against Django Channels 4.3 and a bare ASGI floor "
        "(issue 6). One command installs the environment, one runs everything, one regenerates this page:\n"
    )
    out.append(
        "```sh\nbash bench/setup.sh                      # venv for Channels, uvicorn, npm ws, wrk (idempotent)\n"
        ". .venv/bin/activate\npython bench/run.py                      # all scenarios, 3 rounds, ~20 min; ends by regenerating this file\n"
        "python bench/run.py --quick              # ~4 min smoke run (not used for this page unless no full run exists)\n"
        "python bench/run.py --scenarios S1,S5 --rounds 5\n"
        "bench/.venv-channels/bin/python bench/report.py   # regenerate README.md + results/summary.png\n"
        "python bench/profile.py tri-hypercorn S1  # py-spy profile of one target under one scenario's load\n```\n"
    )

    def lib(sc: str) -> str:
        _rid, recs = chosen[sc]
        v = next(
            (
                r.get("trichannels")
                for r in recs
                if r.get("kind") == "scenario_start" and r.get("scenario") == sc
            ),
            None,
        ) or next(
            (
                r.get("versions", {}).get("trichannels")
                for r in recs
                if r.get("kind") == "run"
            ),
            "?",
        )
        return f"trichannels `{v}`"

    out.append(
        "Runs used: "
        + ", ".join(
            f"{sc} ← `results/run-{rid}.jsonl` ({lib(sc)})"
            for sc, (rid, _) in chosen.items()
        )
        + (
            " (**quick run**: short windows; indicative only)"
            if any(rid.endswith("-quick") for rid in used)
            else ""
        )
        + "\n"
    )

    # --- targets
    out.append("## Targets (ratios measured within one run)\n")
    out.append(
        "Ratio = median of A / median of B over the rounds of one run; in brackets the range of the "
        "per-round ratios (A and B ran back to back in each round). The *CPU* column is the same ratio "
        "computed from server CPU time per operation (B's µs/op ÷ A's µs/op): what the throughput ratio would be "
        "if both servers had a whole core; it is the figure least disturbed by the other processes on this "
        "shared 2-core machine, and a verdict in that column is given beside the measured one.\n"
    )
    rows = []
    for ratio in RATIOS:
        goal = (
            "none (not comparable)" if ratio.info else f"{ratio.op} {ratio.threshold:g}"
        )
        if ratio.scenario not in chosen:
            rows.append(
                [
                    ratio.label,
                    goal,
                    "not run",
                    "–",
                    "–",
                    "–",
                ]
            )
            continue
        ev = eval_ratio(chosen[ratio.scenario][1], ratio)
        if ev is not None and ratio.info:
            pr = ev["per_round"]
            rr = f" ({min(pr):.2f}–{max(pr):.2f})" if len(pr) > 1 else ""
            cpu = f"{ev['cpu_value']:.2f}" if "cpu_value" in ev else "–"
            rows.append(
                [
                    ratio.label,
                    goal,
                    f"{ev['value']:.2f}{rr}",
                    "information only",
                    cpu,
                    str(ev["n"]),
                ]
            )
            continue
        if ev is None:
            rows.append(
                [
                    ratio.label,
                    goal,
                    "no data (target skipped?)",
                    "–",
                    "–",
                    "–",
                ]
            )
            continue
        pr = ev["per_round"]
        rr = f" ({min(pr):.2f}–{max(pr):.2f})" if len(pr) > 1 else ""
        cpu = (
            f"{ev['cpu_value']:.2f} ({'met' if ev['cpu_met'] else 'missed'})"
            if "cpu_value" in ev
            else "–"
        )
        rows.append(
            [
                ratio.label,
                goal,
                f"**{ev['value']:.2f}**{rr}",
                "met" if ev["met"] else "**missed**",
                cpu,
                str(ev["n"]),
            ]
        )
    if "S6" in chosen:
        rss = group(chosen["S6"][1], "S6", "rss")
        for key in sorted(rss, key=sort_key):
            if not key[0].startswith("tri-"):
                continue
            m = rss[key][0]
            rows.append(
                [
                    f"S6 RSS after {m.get('cycles')} connect/disconnect cycles, {label(*key)}",
                    "within 5 %",
                    f"**{m['growth']:+.1%}**",
                    "met" if abs(m["growth"]) <= 0.05 else "**missed**",
                    "–",
                    "1",
                ]
            )
    out.append(
        table(
            ["target", "goal", "measured", "verdict", "by server CPU/op", "rounds"],
            rows,
        )
        + "\n"
    )

    # --- scenario tables
    titles = {
        "S1": (
            "S1 echo — 50 WebSocket clients, closed loop, 32-byte text frames",
            "msgs/s",
        ),
        "S5": ("S5 HTTP — AsyncHttpConsumer 14-byte response, wrk -t1 -c32", "req/s"),
    }
    for sc in ("S1", "S2", "S3", "S4", "S5", "S6"):
        if sc not in chosen:
            continue
        rid, recs = chosen[sc]
        if sc in titles:
            out.append(f"## {titles[sc][0]}\n")
            out.append(ws_table(recs, sc, None, titles[sc][1]) + "\n")
        elif sc == "S2":
            out.append(
                "## S2 broadcast — 100 clients in one room, tutorial chat consumer (`group_send` per message)\n"
            )
            out.append(
                "**Maximum**: 10 of the clients each keep one message in flight (send, wait for their own copy, send "
                "again); a delivery is one message arriving at one client; latency is send → arrival at each client. "
                f"{redis_note(recs)}\n"
            )
            out.append(ws_table(recs, "S2", "max", "deliveries/s") + "\n")
            out.append(
                "**Fixed offered rate** of 2,000 deliveries/s (20 messages/s, round-robin over the clients, open "
                "loop). *lost* counts deliveries that never arrived (Channels' layers drop on a full channel).\n"
            )
            out.append(ws_table(recs, "S2", "fixed", "deliveries/s") + "\n")
        elif sc == "S3":
            out.append("## S3 layer alone — one process, no sockets\n")
            out.append(
                "Every `pairs*` row is the same sequential loop: `send` one message (a 32-character text), then "
                "`receive` it; CPU µs per op is the process's CPU time per pair, both ends included. `pairs`: the "
                "sender's own `!` channel. Our Redis layer delivers that in process without touching Redis, so its "
                "row is `pairs-local` and is **not** comparable with channels_redis' `pairs` (which goes through "
                "Redis). `pairs-peer`: a `!` channel of a second layer instance in the same process (to Redis, "
                "another process), so every message makes the cross-process trip through Redis. `pairs-normal`: a "
                "plain (worker) channel name, through Redis. `group`: `group_send` to 100 members, then `receive` "
                "on each (ours delivers copies to the sender's own channels in process); `group-peer`: the members "
                "belong to a second instance, so every delivery crosses Redis. The Redis targets apply to the "
                f"through-Redis rows. The layer's process is pinned to the server core; {redis_note(recs)}\n"
            )
            out.append(s3_table(recs) + "\n")
        elif sc == "S4":
            out.append(
                "## S4 idle connections — 2,000 open WebSockets (echo consumer, one round trip each)\n"
            )
            out.append(
                "A fresh server per round; RSS (whole process tree) before connecting and 1.5 s after the last "
                "connection's round trip.\n"
            )
            out.append(s4_table(recs) + "\n")
        elif sc == "S6":
            out.append("## S6 churn — connect, one echo, close; 50 at a time\n")
            out.append(
                "Warm-up cycles first, then the cycles split over the rounds (A B C A B C ...). Growth compares RSS "
                "after the churn with RSS after the warm-up.\n"
            )
            out.append(s6_table(recs) + "\n")

    if plot(chosen, RESULTS / "summary.png"):
        out.append("![summary](results/summary.png)\n")

    # --- ceiling
    ceil = [
        r
        for rid in used
        for r in chosen_records(runs[rid])
        if r.get("kind") == "ceiling"
    ]
    if ceil:
        out.append("## Is the load generator the bottleneck?\n")
        out.append(
            "Measured at the start of the run against the bare ASGI echo on uvicorn, the fastest server here. "
            "*ceiling* = messages per second of the client's own CPU time: the rate it could drive with a whole "
            "core. Every table above also lists the client ceiling measured during that scenario's window.\n"
        )
        rows = []
        for r in ceil:
            rows.append(
                [
                    r["client"],
                    k(r["rate"]),
                    f"{r.get('client_util', 0):.0%}",
                    f"{r['client_us_per_msg']:.1f}",
                    k(r["client_ceiling"]),
                    f"{r.get('server_cpu_s', 0) / max(r.get('wall_s', 1), 1e-9):.0%}"
                    if r.get("server_cpu_s")
                    else "–",
                ]
            )
        out.append(
            table(
                [
                    "client",
                    "msgs/s",
                    "client core used",
                    "client µs/msg",
                    "client ceiling msgs/s",
                    "server core used",
                ],
                rows,
            )
            + "\n"
        )

    if METHOD.exists():
        out.append(METHOD.read_text().strip() + "\n")
    if FINDINGS.exists():
        out.append(FINDINGS.read_text().strip() + "\n")

    # --- versions and machine
    out.append("## Versions and machine\n")
    vers = header.get("versions", {})
    if vers:
        out.append(
            table(
                ["component", "version"],
                [[a, f"`{b}`"] for a, b in sorted(vers.items())],
            )
            + "\n"
        )
    mach = header.get("machine", {})
    if mach:
        out.append(table(["machine", ""], [[a, b] for a, b in mach.items()]) + "\n")
    skipped = [r for rid in used for r in runs[rid] if r.get("kind") == "skip"]
    if skipped:
        out.append(
            "Skipped in these runs: "
            + "; ".join(
                sorted(
                    {
                        f"{r['scenario']} {r['target']}@{r['layer']}: {r['reason']}"
                        for r in skipped
                    }
                )
            )
            + "\n"
        )
    errors = [r for rid in used for r in runs[rid] if r.get("kind") == "error"]
    if errors:
        out.append(
            "Errors in these runs: "
            + "; ".join(
                f"{r['scenario']} r{r['round']} {r['target']}@{r['layer']}: "
                f"{r['error'][:160]}"
                for r in errors
            )
            + "\n"
        )
    Path(args.output).write_text("\n".join(out))
    print(f"wrote {args.output} from runs {', '.join(used)}")


def chosen_records(recs: list[dict]) -> list[dict]:
    return recs


if __name__ == "__main__":
    main()
