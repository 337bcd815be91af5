#!/usr/bin/env bash
# Runs every scenario of BENCHMARKS.md, one after another, each against the bare relay and
# then chatd (release builds). Per scenario, OUT_DIR (default:
# bench-results/<UTC date and time>-<commit>) keeps the table and progress (<name>.txt,
# also echoed here) and the JSON summary (<name>.json). A scenario that fails, or reports a
# lost or duplicated message (exit 1), does not stop the others; the script exits 1 if any
# did. About 30-40 minutes on 2 cores, most of it signing up the two 10,000-member groups.
# Usage: scripts/bench-all.sh [OUT_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/protoc-env.sh
cargo build --release -p daehwa-server -p daehwa-bench

OUT="${1:-bench-results/$(date -u +%Y%m%d-%H%M)-$(git rev-parse --short HEAD)}"
mkdir -p "$OUT"
BENCH=target/release/chat-bench
FAILED=()

run() {
    local name="$1"
    shift
    echo "### $name: chat-bench $*" >&2
    # stderr (table and progress) through tee, stdout (JSON) to its file.
    set +e
    { "$BENCH" "$@" --json 2>&1 >"$OUT/$name.json" | tee "$OUT/$name.txt" >&2; }
    local status="${PIPESTATUS[0]}"
    set -e
    if [ "$status" -ne 0 ]; then
        echo "### $name exited $status" >&2
        FAILED+=("$name")
    fi
}

run a-pairs-grpc pairs --pairs 100 --in-flight 8 --seconds 10 --size 64
run a-pairs-ws pairs --transport ws --pairs 100 --in-flight 8 --seconds 10 --size 64
run b-latency-grpc latency --rate 20000 --pairs 100 --seconds 10 --rounds 3
run b-latency-ws latency --transport ws --rate 20000 --pairs 100 --seconds 10 --rounds 3
run b-latency-50k-grpc latency --rate 50000 --pairs 100 --seconds 10
run b-latency-5k-grpc latency --rate 5000 --pairs 100 --seconds 10
run b-latency-10k-grpc latency --rate 10000 --pairs 100 --seconds 10
run c-idle-1000-grpc idle --sessions 1000
run c-idle-15000-grpc idle --sessions 15000
run c-idle-15000-ws idle --transport ws --sessions 15000
run d-fanout-1000-grpc fanout --members 1000
run d-fanout-1000-ws fanout --transport ws --members 1000
run d-fanout-10000-grpc fanout --members 10000
run d-fanout-10000-ws fanout --transport ws --members 10000
run e-catchup catchup --behind 10000
run f-storm-grpc storm --sessions 10000
run f-storm-ws storm --transport ws --sessions 10000

echo "results in $OUT" >&2
if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "failed: ${FAILED[*]}" >&2
    exit 1
fi
