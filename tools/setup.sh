#!/usr/bin/env bash
# Sets up a fresh machine for modelforge: a virtualenv in .venv with the pinned toolchain
# (constraints.txt), .venv-sign for OpenSSF's model_signing, the web runtime's npm packages, and
# Debian's chromium (browser tests; driven by the playwright package, which never downloads a
# browser of its own) and nginx, caddy and apache2 (the generated server configs are tested by
# serving with them). The four installs do not depend on each other, so they run at once (on two
# cores the downloads of one overlap the unpacking of another); each one's output is shown when it
# ends, and setup fails if any of them fails. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d "${TMPDIR:-/tmp}/modelforge-setup-XXXXXX")
trap 'rm -rf "$logs"' EXIT

toolchain() {
    python3 -m venv .venv
    # torch first and pinned: the machine ships a CPU wheel of 2.13.0; an unpinned torch would pull
    # gigabytes of CUDA packages.
    .venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
    .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
}

signing() {
    # The model_signing command that signs and checks each target's files (docs/provenance.md), in an
    # environment of its own: its dependencies conflict with the edge toolchain's (tools/model-signing.txt).
    python3 -m venv .venv-sign
    .venv-sign/bin/pip install --quiet --disable-pip-version-check -r tools/model-signing.txt
}

web_runtime() {
    if [ -f web/package-lock.json ] && command -v npm >/dev/null; then
        npm ci --prefix web --no-audit --no-fund --loglevel=error
    fi
}

system_packages() {
    local packages="" tool service
    for tool in chromium nginx caddy apache2; do
        command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || packages="$packages $tool"
    done
    # Another apt (unattended-upgrades on a fresh machine) may hold the dpkg lock: wait for it, up to
    # ten minutes, instead of giving up at once.
    local apt_wait=(-o DPkg::Lock::Timeout=600)
    if [ -n "$packages" ] && [ "${MODELFORGE_SKIP_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ]; then
        (apt-get "${apt_wait[@]}" update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends $packages fonts-dejavu-core >/dev/null) \
            || echo "setup: could not install$packages; the tests that need them will be skipped" >&2
        # The packages' own services are not wanted: the tests start their servers on 127.0.0.1 themselves.
        for service in nginx apache2 caddy; do (service "$service" stop || true) >/dev/null 2>&1; done
    fi
}

declare -A jobs=()
for job in toolchain signing web_runtime system_packages; do
    "$job" >"$logs/$job.log" 2>&1 &
    jobs[$job]=$!
done
failed=""
for job in toolchain signing web_runtime system_packages; do
    if ! wait "${jobs[$job]}"; then
        failed="$failed $job"
    fi
    # pip's note that a find-links folder is absent is noise on this machine kind.
    grep -v "^WARNING: Location 'file://" "$logs/$job.log" >&2 || true
done
if [ -n "$failed" ]; then
    echo "setup: failed:$failed (its output is above)" >&2
    exit 1
fi

# In CI a skipped browser test is a silent gap, not a convenience: the page is what users run.
if [ "${CI:-}" = true ] && ! command -v chromium >/dev/null; then
    echo "setup: CI=true but chromium is not installed, so the browser tests would be skipped; install it (apt-get install chromium) and run again" >&2
    exit 1
fi
