#!/usr/bin/env bash
# Builds the web client into dist/ (committed: the gateway embeds it, users need no build step).
#   1. TypeScript for chat.v1 from ../../proto (buf generate + protoc-gen-es, pinned here);
#   2. type-check (tsc --noEmit);
#   3. bundle src/app.ts with esbuild into dist/app.js, copy style.css and index.html.
# Needs Node 20+ and npm; buf comes from ../../tools (scripts/install-test-tools.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(cd ../.. && pwd)"
BUF="$ROOT/tools/node_modules/.bin/buf"
[[ -x "$BUF" ]] || { echo "buf missing: run scripts/install-test-tools.sh" >&2; exit 1; }
if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules ]]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
rm -rf src/gen
"$BUF" generate
./node_modules/.bin/tsc -p tsconfig.json
mkdir -p dist
./node_modules/.bin/esbuild src/app.ts --bundle --format=esm --target=es2022 --minify \
    --legal-comments=none --outfile=dist/app.js --log-level=warning
./node_modules/.bin/esbuild style.css --minify --outfile=dist/app.css --log-level=warning
cp index.html dist/index.html
echo "built dist/: $(wc -c <dist/app.js) bytes of JS, $(wc -c <dist/app.css) bytes of CSS"
