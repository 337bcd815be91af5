#!/usr/bin/env bash
# Daehwa's one test command (CI runs it on a clean clone through .ci/run):
# tools, format, proto lint, build, clippy, then every test of the workspace.
# Stops at the first failing step with a non-zero exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

current="start"
step() {
    current="$*"
    printf '\n==> %s\n' "$current"
}
trap 'echo "==> FAILED: $current" >&2' ERR
started=$SECONDS

source scripts/protoc-env.sh

step "install test tools (scripts/install-test-tools.sh)"
scripts/install-test-tools.sh

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "buf lint (proto/)"
tools/node_modules/.bin/buf lint

step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace

printf '\n==> all steps passed in %ss\n' "$((SECONDS - started))"
