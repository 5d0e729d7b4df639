#!/usr/bin/env bash
# Sets up a fresh machine for modelforge: a virtualenv in .venv with the pinned toolchain
# (constraints.txt), the web runtime's npm packages, and Debian's chromium for the browser tests.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
# torch first and pinned: the machine ships a CPU wheel of 2.13.0; an unpinned torch would pull
# gigabytes of CUDA packages.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'

if [ -f web/package-lock.json ] && command -v npm >/dev/null; then
    npm ci --prefix web --no-audit --no-fund --loglevel=error
fi

if [ "${MODELFORGE_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "setup: could not install chromium; browser tests will be skipped" >&2
fi
