#!/usr/bin/env bash
# Installs the Prism mock server (@stoplight/prism-cli 5.14.2, the last version that runs on Node 20;
# see ../shared/ci-tools.md) into .ci/node_modules and prints the path of its binary on stdout, for
# .ci/run to export as KEYLESS_PRISM. Everything else goes to stderr. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/node_modules/.bin/prism"
version="5.14.2"
if [ ! -x "$bin" ] || [ "$("$bin" --version 2>/dev/null || true)" != "$version" ]; then
  npm install --prefix "$here" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
    "@stoplight/prism-cli@$version" >&2
fi
"$bin" --version >&2
echo "$bin"
