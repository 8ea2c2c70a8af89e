"""Benchmark targets: how each server is started, pinned, sampled and stopped.

A *target* is one application on one server (``tri-hypercorn``, ``dj-daphne``, ...).
:class:`Server` starts it pinned to the server core with ``taskset``, waits until it
accepts connections, and reads its CPU time and RSS from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROJECT_VENV = ROOT / ".venv"
CHANNELS_VENV = BENCH / ".venv-channels"
NODE_MODULES = BENCH / ".venv-node" / "node_modules"
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"

SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "1")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Target:
    name: str  # e.g. "tri-hypercorn"
    app: str  # "tri" | "dj" | "floor"
    server: str  # "hypercorn-trio" | "uvicorn" | "daphne"
    label: str  # for tables

    def venv(self) -> Path:
        return CHANNELS_VENV if self.app == "dj" else PROJECT_VENV

    def argv(self, port: int) -> list[str]:
        bindir = self.venv() / "bin"
        module = {
            "tri": "apps.tri:application",
            "dj": "apps.dj.asgi:application",
            "floor": "apps.floor:application",
        }[self.app]
        if self.server == "hypercorn-trio":
            # -w 0: serve in this process (the same trio worker a worker process runs),
            # so the pid we sample and profile is the one doing the work.
            return [
                str(bindir / "hypercorn"),
                "-k",
                "trio",
                "-w",
                "0",
                "-b",
                f"127.0.0.1:{port}",
                "--log-level",
                "WARNING",
                module,
            ]
        if self.server == "uvicorn":
            return [
                str(bindir / "uvicorn"),
                module,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
                "--lifespan",
                "auto",
            ]
        if self.server == "daphne":
            return [
                str(bindir / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "-v",
                "0",
                module,
            ]
        raise ValueError(self.server)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target(
            "tri-hypercorn", "tri", "hypercorn-trio", "trichannels / Hypercorn-trio"
        ),
        Target("tri-uvicorn", "tri", "uvicorn", "trichannels / uvicorn"),
        Target("dj-daphne", "dj", "daphne", "Channels / daphne"),
        Target("dj-uvicorn", "dj", "uvicorn", "Channels / uvicorn"),
        Target(
            "floor-hypercorn", "floor", "hypercorn-trio", "bare ASGI / Hypercorn-trio"
        ),
        Target("floor-uvicorn", "floor", "uvicorn", "bare ASGI / uvicorn"),
    ]
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [
                    int(c)
                    for c in Path(f"/proc/{pid}/task/{tid}/children")
                    .read_text()
                    .split()
                ]
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (every thread), in seconds."""
    total = 0
    for p in process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def _redis_pid(url: str) -> int | None:
    """The pid of the Redis server at ``url`` if it runs on this machine, else None."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2
        ) as sock:
            if parts.password:
                sock.sendall(f"AUTH {parts.password}\r\n".encode())
                sock.recv(256)
            sock.sendall(b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            pid = int(line.split(":", 1)[1])
            return pid if Path(f"/proc/{pid}").exists() else None
    return None


@contextlib.contextmanager
def redis_pinned(url: str, cpu: str = CLIENT_CPU):
    """Pin the local Redis server (every thread) to ``cpu`` for the block; restore after.

    Yields a line saying what was done. The server core is then the server's alone:
    an unpinned Redis is sometimes scheduled there and takes CPU time from the server
    under test (more for a layer that makes more Redis calls per message).
    """
    pid = _redis_pid(url)
    if pid is None:
        yield f"Redis at {url.split('@')[-1]} not pinned: not a process on this machine"
        return
    saved: dict[int, set[int]] = {}
    want = {int(c) for c in cpu.split(",")}
    try:
        for tid in (int(t) for t in os.listdir(f"/proc/{pid}/task")):
            with contextlib.suppress(OSError):
                saved[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, want)
    except OSError as exc:
        yield f"Redis (pid {pid}) not pinned: {exc}"
        return
    try:
        yield f"Redis (pid {pid}, {len(saved)} threads) pinned to CPU {cpu} for the run"
    finally:
        for tid, cpus in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


def rss_bytes(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


@dataclass
class Server:
    target: Target
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 30.0) -> Server:
        self.port = self.port or free_port()
        LOGS.mkdir(parents=True, exist_ok=True)
        layer = (
            self.env_extra.get("TRI_LAYER") or self.env_extra.get("DJ_LAYER") or "none"
        )
        tag = f"{self.target.name}-{layer}"
        self.log_path = LOGS / f"{tag}-{self.port}.log"
        env = dict(os.environ)
        # Never inherit the runner's venv: each server runs from its own.
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{self.target.venv() / 'bin'}:{env.get('PATH', '')}"
        # The project is imported from the work tree (not installed), as its tests do.
        env["PYTHONPATH"] = f"{BENCH}:{ROOT}" if self.target.app != "dj" else str(BENCH)
        env["DJANGO_SETTINGS_MODULE"] = "apps.dj.settings"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env_extra)
        argv = ["taskset", "-c", SERVER_CPU, *self.target.argv(self.port)]
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=BENCH,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_raise_nofile,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.target.name} exited at start; see {self.log_path}:\n"
                    + self.log_tail()
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(
                f"{self.target.name} did not listen within {timeout}s; see {self.log_path}"
            )
        time.sleep(0.3)  # lifespan startup (layers opening) finishes after listen
        return self

    def log_tail(self, n: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(8)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # this very process, by its pid
            self.proc.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def library_version() -> str:
    """git HEAD of the work tree plus how many files under trichannels/ differ from it.

    Other people commit while the suite runs, and servers import the work tree, so this
    is recorded when each scenario starts (its servers start then)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "trichannels"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (
        f" + {len(dirty)} uncommitted file(s) in trichannels/" if dirty else ""
    )


def versions() -> dict[str, str]:
    """Versions of every moving part, from both venvs, node, ws, wrk and Redis."""
    out: dict[str, str] = {"python": sys.version.split()[0]}

    def freeze(python: Path, names: set[str]) -> dict[str, str]:
        try:
            text = subprocess.run(
                [str(python), "-m", "pip", "freeze", "--all"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
        got = {}
        for line in text.splitlines():
            if "==" in line:
                k, v = line.split("==", 1)
                if k.lower() in names:
                    got[k.lower()] = v
        return got

    tri_names = {
        "trio",
        "anyio",
        "hypercorn",
        "wsproto",
        "h11",
        "uvicorn",
        "uvloop",
        "websockets",
        "httptools",
        "coredis",
        "msgpack",
    }
    dj_names = {
        "django",
        "channels",
        "channels-redis",
        "channels_redis",
        "daphne",
        "twisted",
        "autobahn",
        "uvicorn",
        "uvloop",
        "websockets",
        "httptools",
        "redis",
        "asgiref",
        "msgpack",
    }
    for k, v in freeze(PROJECT_VENV / "bin" / "python", tri_names).items():
        out[f"project:{k}"] = v
    for k, v in freeze(CHANNELS_VENV / "bin" / "python", dj_names).items():
        out[f"channels-venv:{k}"] = v
    try:
        out["trichannels"] = library_version()
    except OSError:
        pass
    for name, argv in {
        "node": ["node", "--version"],
        "redis": ["redis-server", "--version"],
        "wrk": ["wrk", "--version"],
    }.items():
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            out[name] = (r.stdout or r.stderr).strip().splitlines()[0][:80]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            out[name] = "missing"
    pkg = NODE_MODULES / "ws" / "package.json"
    if pkg.exists():
        import json

        out["ws (npm)"] = json.loads(pkg.read_text())["version"]
    return out


def machine() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        info["uname"] = subprocess.run(
            ["uname", "-srm"], capture_output=True, text=True
        ).stdout.strip()
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in {
                "Model name",
                "CPU(s)",
                "Thread(s) per core",
                "CPU MHz",
                "L2 cache",
                "L3 cache",
                "Hypervisor vendor",
            }:
                info[k.strip()] = v.strip()
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory"] = f"{int(mem) // 1024 // 1024} GiB"
    except OSError:
        pass
    return info
