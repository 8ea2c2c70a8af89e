#!/usr/bin/env bash
# Install the benchmark environment (idempotent):
#   * bench/.venv-channels: Django + Channels 4.3 + channels_redis 4.3 + daphne + uvicorn[standard]
#     (+ matplotlib for the report, py-spy for profiles), pinned in requirements-channels.txt
#   * uvicorn[standard] in the project venv (.venv), pinned in requirements-project-extra.txt
#   * the load generator's npm package `ws` in bench/.venv-node (Node from the machine)
#   * wrk from Debian (apt-get) if missing
# Usage: bash bench/setup.sh      (from anywhere)
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
PY="${BENCH_PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
step() { printf '\n==> %s\n' "$*"; }

step "project venv: $ROOT/.venv"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "the project venv is missing; create it first (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')" >&2
  exit 1
fi
if "$ROOT/.venv/bin/python" - "$BENCH/requirements-project-extra.txt" <<'PYEOF'
import sys, importlib.metadata as md
want = {}
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, ver = line.split("==")
        want[name.split("[")[0]] = ver
ok = True
for n, v in want.items():
    try:
        ok &= md.version(n) == v
    except md.PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
PYEOF
then
  echo "uvicorn already installed in the project venv"
else
  echo "installing uvicorn[standard] into the project venv"
  "$ROOT/.venv/bin/pip" install -q -r "$BENCH/requirements-project-extra.txt"
fi

step "Channels venv: $BENCH/.venv-channels"
if [ ! -x "$BENCH/.venv-channels/bin/python" ]; then
  "$PY" -m venv "$BENCH/.venv-channels"
fi
"$BENCH/.venv-channels/bin/pip" install -q --disable-pip-version-check -r "$BENCH/requirements-channels.txt"
"$BENCH/.venv-channels/bin/python" -c "import channels, channels_redis, daphne, django, uvicorn; print('channels', channels.__version__, '| channels_redis', channels_redis.__version__, '| daphne', daphne.__version__, '| Django', django.get_version(), '| uvicorn', uvicorn.__version__)"

step "load generator: npm ws in $BENCH/.venv-node"
WS_VERSION=8.23.0
if [ -f "$BENCH/.venv-node/node_modules/ws/package.json" ] && grep -q "\"version\": \"$WS_VERSION\"" "$BENCH/.venv-node/node_modules/ws/package.json"; then
  echo "ws $WS_VERSION already installed"
else
  command -v npm >/dev/null || { echo "node/npm are missing (apt-get install nodejs npm)" >&2; exit 1; }
  mkdir -p "$BENCH/.venv-node"
  (cd "$BENCH/.venv-node" && npm install --no-audit --no-fund --no-save "ws@$WS_VERSION")
fi
node --version

step "wrk"
if command -v wrk >/dev/null; then
  echo "wrk already installed"
else
  apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
fi

step "tools"
for t in taskset redis-cli; do
  command -v "$t" >/dev/null && echo "$t: ok" || echo "$t: MISSING (needed: util-linux / redis-tools)"
done
redis-cli -u "${BENCH_REDIS_URL:-redis://127.0.0.1:6379/10}" ping || echo "Redis is not answering: S2/S3 Redis variants will be skipped or fail"
echo
echo "ready: python bench/run.py --quick   (or: python bench/run.py)"
