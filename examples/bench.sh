#!/usr/bin/env bash
# Runs the release server and the load generator once:
#   examples/bench.sh STREAMS [loadgen flags...]
# Prints the binary size, the idle server's RSS, then loadgen's JSON line.
# Needs `cargo build --release --examples` first. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
streams=$1
shift
port=${BENCH_PORT:-8100}
bin=${BENCH_BIN:-target/release/tinysse}
log=${BENCH_LOG:-/tmp/tinysse-bench.log}
"$bin" --port "$port" --max-connections 20000 --tick-interval 0 ${BENCH_SERVER_FLAGS:-} >/dev/null 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
sleep 2
echo "binary_bytes $(stat -c %s "$bin")"
echo "idle_rss_kib $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
timeout 900 "${BENCH_LOADGEN:-target/release/examples/loadgen}" --addr "127.0.0.1:$port" --pid "$pid" --streams "$streams" "$@"
