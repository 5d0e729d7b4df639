#!/usr/bin/env bash
# Sets up a fresh machine for modelforge: a virtualenv in .venv with the pinned toolchain
# (constraints.txt), .venv-sign for OpenSSF's model_signing, the web runtime's npm packages, and
# Debian's chromium (browser tests; driven by the playwright package, which never downloads a
# browser of its own) and nginx, caddy and apache2 (the generated server configs are tested by
# serving with them), and llama.cpp compiled from the pinned llama-cpp-python sdist (the gguf
# target). The five jobs do not depend on each other, so they run at once (on two cores the
# downloads of one overlap the unpacking of another, and the compile fills the gaps); each one's
# output is shown when it ends, and setup fails if any of them fails. Idempotent: a second run
# installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d "${TMPDIR:-/tmp}/modelforge-setup-XXXXXX")
trap 'rm -rf "$logs"' EXIT

# llama.cpp for the gguf target (docs/targets/gguf.md). llama-cpp-python is a source distribution
# only, and compiling it takes about five minutes on two free cores, so it is the first job to start;
# the wheel is kept in the user cache under a key of the pin (tools/llama-cpp-python.txt: version and
# sdist hash), the build flags and the compiler, so a machine compiles it once (a later setup, or CI
# on the same machine, only installs it). The sdist stays beside it: the converter comes from its
# vendor/llama.cpp (src/modelforge/steps/gguf/converter.py).
tools_cache="${MODELFORGE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelforge/tools}"
llama_pin=$(grep -v '^#' tools/llama-cpp-python.txt)
llama_version=$(echo "$llama_pin" | sed -E 's/^llama-cpp-python==([^ ]+) .*/\1/')
# Portable (no -march=native: the same quantizer code on every x86-64-v3 machine), CPU only, no
# server, tools, examples or tests: the library, ggml and mtmd (images) are all we load.
llama_cmake_args="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF"
llama_key=$(printf '%s\n%s\n%s\n' "$llama_pin" "$llama_cmake_args" "$(cc --version 2>/dev/null | head -1)" | sha256sum | cut -c1-16)
llama_wheels="$tools_cache/wheels/llama-cpp-python-$llama_key"
llama_sdist="$tools_cache/sdist/llama_cpp_python-$llama_version.tar.gz"

llama_cpp() {
    mkdir -p "$tools_cache/sdist" "$tools_cache/wheels"
    if [ ! -f "$llama_sdist" ]; then
        local download
        download=$(mktemp -d "$tools_cache/sdist/download-XXXXXX")
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: --require-hashes \
            -r tools/llama-cpp-python.txt -d "$download"
        mv "$download/llama_cpp_python-$llama_version.tar.gz" "$llama_sdist"
        rm -rf "$download"
    fi
    if ! ls "$llama_wheels"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
        rm -rf "$llama_wheels.tmp"
        local started=$SECONDS
        CMAKE_ARGS="$llama_cmake_args" python3 -m pip wheel --quiet --disable-pip-version-check --no-deps \
            -w "$llama_wheels.tmp" "$llama_sdist"
        rm -rf "$llama_wheels"
        mv "$llama_wheels.tmp" "$llama_wheels"
        echo "setup: compiled llama-cpp-python $llama_version in $((SECONDS - started)) s (kept in $llama_wheels)"
    fi
}

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
for job in llama_cpp toolchain signing web_runtime system_packages; do
    "$job" >"$logs/$job.log" 2>&1 &
    jobs[$job]=$!
done
failed=""
for job in llama_cpp toolchain signing web_runtime system_packages; do
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
# The compiled llama.cpp into the toolchain's venv (once both jobs are done); its dependencies
# (numpy, jinja2, diskcache) from constraints.txt.
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt --find-links "$llama_wheels" "llama-cpp-python==$llama_version" 2>&1 \
    | { grep -v "^WARNING: Location 'file://" || true; } >&2

# In CI a skipped browser test is a silent gap, not a convenience: the page is what users run.
if [ "${CI:-}" = true ] && ! command -v chromium >/dev/null; then
    echo "setup: CI=true but chromium is not installed, so the browser tests would be skipped; install it (apt-get install chromium) and run again" >&2
    exit 1
fi
