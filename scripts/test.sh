#!/usr/bin/env bash
# The test suite: sets up whatever is missing (scripts/setup.sh), starts a
# private redis-server on a free loopback port (stopped afterwards by its
# pid), then runs every test of the workspace. Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh -p osa-runtime`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

work="$(mktemp -d "${TMPDIR:-/tmp}/osa-test.XXXXXX")"
port="$("$OSA_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "$work" --pidfile "$work/redis.pid" --logfile "$work/redis.log" --daemonize yes
cleanup() {
  if [ -f "$work/redis.pid" ]; then kill "$(cat "$work/redis.pid")" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$port" ping >/dev/null || { echo "redis-server did not start:"; cat "$work/redis.log"; exit 1; }
export OSA_TEST_REDIS_URL="redis://127.0.0.1:$port"
echo "[test] redis-server on 127.0.0.1:$port (pid $(cat "$work/redis.pid"))"

cargo test --workspace "$@"

# The Kubernetes manifests: every overlay rendered and validated offline.
bash scripts/validate-deploy.sh
