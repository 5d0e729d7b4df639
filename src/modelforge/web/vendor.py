"""The web runtimes, vendored from the build-time npm project in `web/`: MediaPipe GenAI (text-only
`.task` variants) and LiteRT.js with a tokenizer and a Jinja renderer (variants with images).

`web/package.json` + `web/package-lock.json` pin `@mediapipe/tasks-genai`; `npm ci --prefix web`
installs it into `web/node_modules`. Nothing is ever loaded from a CDN: the build copies the files
named here into the bundle (`runtime/`) and records their sha256.

Files taken (all from the package root / its `wasm/` directory):
- `genai_bundle.mjs`            the ES module (FilesetResolver, LlmInference)
- `genai_wasm_internal.js`      the Emscripten loader (SIMD build; classic script, sets ModuleFactory)
- `genai_wasm_internal.wasm`    the runtime itself (SIMD)

LiteRT.js (`LITERTJS_FILES`, for `runtime: litertjs` variants): `@litertjs/core` (ES module) and
its one dependency `@litertjs/wasm-utils`; three of its Emscripten `.js`/`.wasm` pairs (the page picks
one by the browser's features, as `loadLiteRt(dir)` would: JSPI + relaxed SIMD, relaxed SIMD, neither);
`@huggingface/tokenizers` (tokenizer.json, transformers' own ids) and `@huggingface/jinja` (the chat
template). Two references between these files are by name (a bare import of `@litertjs/wasm-utils`,
each loader's `.wasm` file name); `LITERTJS_REFERENCES` lists them and the bundle writes the
content-hashed names in their place (an import map would need an inline script, which the CSP forbids).
Not taken: the threaded pair (it needs SharedArrayBuffer threads the page does not use).

onnxruntime-web (`ORTWEB_FILES`, for `runtime: onnxruntime_web` variants): the WebGPU build's ES module
(`ort.webgpu.min.mjs`, which also runs the wasm CPU provider) and its asyncify Emscripten pair, plus the
same tokenizer and template renderer. The module finds the pair through `env.wasm.wasmPaths`, which the
page sets to their content-hashed URLs, so nothing in these files is rewritten. Not taken: the JSEP,
JSPI and plain wasm builds, WebGL, the bundles that inline the wasm, and the source maps.

Not taken: the `nosimd` build (every browser with WebGPU has WebAssembly SIMD; the app checks and
says so), the `module` build (ES-module loader variant of the same wasm) and the source maps.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = [
    "LITERTJS_FILES", "LITERTJS_PACKAGES", "LITERTJS_REFERENCES", "ORTWEB_FILES", "ORTWEB_PACKAGES", "PACKAGE", "RUNTIME_FILES",
    "RuntimeMissingError", "litertjs_files", "litertjs_versions", "ortweb_files", "ortweb_versions", "runtime_files",
    "runtime_version", "web_dir",
]

PACKAGE = "@mediapipe/tasks-genai"
# logical name (the name the app and bundle.json use) → path inside the npm package
RUNTIME_FILES: dict[str, str] = {
    "genai_bundle.mjs": "genai_bundle.mjs",
    "genai_wasm_internal.js": "wasm/genai_wasm_internal.js",
    "genai_wasm_internal.wasm": "wasm/genai_wasm_internal.wasm",
}

LITERTJS_PACKAGES = ("@litertjs/core", "@litertjs/wasm-utils", "@huggingface/tokenizers", "@huggingface/jinja")
# logical name → (npm package, path inside it)
LITERTJS_FILES: dict[str, tuple[str, str]] = {
    "litertjs_core.mjs": ("@litertjs/core", "dist/index.js"),
    "litertjs_wasm_utils.mjs": ("@litertjs/wasm-utils", "dist/index.js"),
    **{
        f"litert_wasm_{flavour}internal.{ext}": ("@litertjs/core", f"wasm/litert_wasm_{flavour}internal.{ext}")
        for flavour in ("jspi_", "", "compat_") for ext in ("js", "wasm")
    },
    "tokenizers.mjs": ("@huggingface/tokenizers", "dist/tokenizers.min.mjs"),
    "jinja.mjs": ("@huggingface/jinja", "dist/index.js"),
}
ORTWEB_PACKAGES = ("onnxruntime-web", "@huggingface/tokenizers", "@huggingface/jinja")
# logical name → (npm package, path inside it)
ORTWEB_FILES: dict[str, tuple[str, str]] = {
    "ort.webgpu.min.mjs": ("onnxruntime-web", "dist/ort.webgpu.min.mjs"),
    "ort-wasm-simd-threaded.asyncify.mjs": ("onnxruntime-web", "dist/ort-wasm-simd-threaded.asyncify.mjs"),
    "ort-wasm-simd-threaded.asyncify.wasm": ("onnxruntime-web", "dist/ort-wasm-simd-threaded.asyncify.wasm"),
    "tokenizers.mjs": LITERTJS_FILES["tokenizers.mjs"],
    "jinja.mjs": LITERTJS_FILES["jinja.mjs"],
}
# file → {exact text in it: the logical file that text names}; each text occurs exactly once.
LITERTJS_REFERENCES: dict[str, dict[str, str]] = {
    "litertjs_core.mjs": {'from "@litertjs/wasm-utils"': "litertjs_wasm_utils.mjs"},
    **{
        f"litert_wasm_{flavour}internal.js": {f'locateFile("litert_wasm_{flavour}internal.wasm")': f"litert_wasm_{flavour}internal.wasm"}
        for flavour in ("jspi_", "", "compat_")
    },
}


def web_dir() -> Path:
    """$MODELFORGE_WEB_DIR, else the `web/` npm project of this checkout (tools/setup.sh runs npm ci there)."""
    import os

    if os.environ.get("MODELFORGE_WEB_DIR"):
        return Path(os.environ["MODELFORGE_WEB_DIR"])
    return Path(__file__).resolve().parents[3] / "web"


class RuntimeMissingError(FileNotFoundError):
    """The vendored runtime is not installed (web/node_modules missing or incomplete)."""


def _package_dir(web_dir: Path) -> Path:
    return Path(web_dir) / "node_modules" / PACKAGE


def _install_hint(web_dir: Path) -> str:
    return f"run `npm ci --prefix {web_dir}` (installs the {PACKAGE} pinned in its package-lock.json)"


def runtime_version(web_dir: Path) -> str:
    """The installed package's version (from node_modules), checked against the pin in web/package.json."""
    package_json = _package_dir(web_dir) / "package.json"
    if not package_json.is_file():
        raise RuntimeMissingError(f"{PACKAGE} is not installed in {Path(web_dir) / 'node_modules'}: {_install_hint(web_dir)}")
    installed = json.loads(package_json.read_text())["version"]
    pinned = json.loads((Path(web_dir) / "package.json").read_text()).get("dependencies", {}).get(PACKAGE)
    if pinned is not None and pinned != installed:
        raise RuntimeMissingError(
            f"{PACKAGE} {installed} is installed but {Path(web_dir) / 'package.json'} pins {pinned}: "
            f"{_install_hint(web_dir)}"
        )
    return installed


def runtime_files(web_dir: Path) -> dict[str, Path]:
    """{logical file name: path in web/node_modules} of the runtime files the app needs.
    Raises RuntimeMissingError (saying to run `npm ci --prefix web`) if they are not installed."""
    web_dir = Path(web_dir)
    if not (web_dir / "package.json").is_file():
        raise RuntimeMissingError(f"{web_dir} is not the modelforge web/ npm project (no package.json)")
    package = _package_dir(web_dir)
    if not (web_dir / "node_modules").is_dir():
        raise RuntimeMissingError(f"{web_dir / 'node_modules'} does not exist: {_install_hint(web_dir)}")
    runtime_version(web_dir)
    files = {name: package / rel for name, rel in RUNTIME_FILES.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise RuntimeMissingError(f"runtime files missing: {', '.join(missing)}: {_install_hint(web_dir)}")
    return files


def litertjs_versions(web_dir: Path, packages: tuple[str, ...] = LITERTJS_PACKAGES) -> dict[str, str]:
    """{package: installed version} of the LiteRT.js runtime's packages (or of `packages`); a package
    pinned in web/package.json must be installed at its pin (wasm-utils comes with core, pinned by the lock)."""
    web_dir = Path(web_dir)
    pins = json.loads((web_dir / "package.json").read_text()).get("dependencies", {}) if (web_dir / "package.json").is_file() else {}
    versions = {}
    for package in packages:
        package_json = web_dir / "node_modules" / package / "package.json"
        if not package_json.is_file():
            raise RuntimeMissingError(f"{package} is not installed in {web_dir / 'node_modules'}: run `npm ci --prefix {web_dir}`")
        installed = json.loads(package_json.read_text())["version"]
        if package in pins and pins[package] != installed:
            raise RuntimeMissingError(f"{package} {installed} is installed but {web_dir / 'package.json'} pins {pins[package]}: run `npm ci --prefix {web_dir}`")
        versions[package] = installed
    return versions


def litertjs_files(web_dir: Path) -> dict[str, Path]:
    """{logical file name: path in web/node_modules} of the LiteRT.js runtime, tokenizer and template
    renderer. Raises RuntimeMissingError (saying to run `npm ci --prefix web`) if they are not installed."""
    litertjs_versions(web_dir)
    return _installed(Path(web_dir), LITERTJS_FILES, "LiteRT.js runtime")


def _installed(web_dir: Path, table: dict[str, tuple[str, str]], what: str) -> dict[str, Path]:
    files = {name: web_dir / "node_modules" / package / rel for name, (package, rel) in table.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise RuntimeMissingError(f"{what} files missing: {', '.join(missing)}: run `npm ci --prefix {web_dir}`")
    return files


def ortweb_versions(web_dir: Path) -> dict[str, str]:
    """{package: installed version} of onnxruntime-web, the tokenizer and the template renderer."""
    return litertjs_versions(web_dir, ORTWEB_PACKAGES)


def ortweb_files(web_dir: Path) -> dict[str, Path]:
    """{logical file name: path in web/node_modules} of onnxruntime-web's WebGPU build, the tokenizer and
    the template renderer. Raises RuntimeMissingError (saying to run `npm ci --prefix web`) if they are not installed."""
    ortweb_versions(web_dir)
    return _installed(Path(web_dir), ORTWEB_FILES, "onnxruntime-web")
