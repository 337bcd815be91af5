#!/usr/bin/env bash
# Builds Daehwa (server `chatd` and terminal client `chat`, release mode) and runs chatd on
# its embedded defaults: gRPC on 127.0.0.1:50051, data in ./data. Arguments go to chatd,
# e.g. `scripts/run.sh --listen 0.0.0.0:50051 --metrics-listen 127.0.0.1:9090`.
# Needs only a Rust toolchain: SQLite is built in, and protoc comes from a vendored crate
# when the system has none (scripts/protoc-env.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required: install Rust from https://rustup.rs (or your distribution's rustup package)" >&2
    exit 1
fi

source scripts/protoc-env.sh

cargo build --release -p daehwa-server -p daehwa-cli
echo "built target/release/chatd and target/release/chat"
exec target/release/chatd "$@"
