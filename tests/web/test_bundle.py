"""write_bundle layout and determinism; vendor.runtime_files; the app's own unit test via node."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from modelforge.web.layout import CHUNK_SIZE, BundleError, Variant, bundle_files, write_bundle
from modelforge.web.headers import all_configs
from modelforge.web.taskfile import gemma_params, write_task
from modelforge.web.vendor import RUNTIME_FILES, RuntimeMissingError, runtime_files, runtime_version

from .conftest import ROOT, TINY, WEB_DIR, fake_tflite


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout(small_bundle, small_task, fake_runtime):
    digest = sha(small_task)
    files = tree(small_bundle)
    assert sorted(files) == sorted(
        [
            "index.html", "app.js", "accumulator.js", "litert.js", "ortweb.js", "style.css", "favicon.svg", "bundle.json",
            ".htaccess", "Caddyfile", "_headers", "firebase.json", "nginx.conf",
            f"models/small-{digest[:16]}.task",
            *[
                f"runtime/{name.rsplit('.', 1)[0]}-{sha(path)[:16]}.{name.rsplit('.', 1)[1]}"
                for name, path in fake_runtime.items()
            ],
        ]
    )
    assert files[f"models/small-{digest[:16]}.task"] == small_task.read_bytes()
    html = files["index.html"].decode()
    assert "<title>Test bundle</title>" in html and "%TITLE%" not in html
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere


def test_bundle_json(small_bundle, small_task, fake_runtime):
    manifest = json.loads((small_bundle / "bundle.json").read_text())
    digest = sha(small_task)
    assert manifest["schema"] == "modelforge-web-bundle/1"
    assert manifest["title"] == "Test bundle"
    assert manifest["runtime"]["package"] == "@mediapipe/tasks-genai"
    assert manifest["runtime"]["version"] == "0.0.0-test"
    assert set(manifest["runtime"]["files"]) == set(RUNTIME_FILES)
    for name, entry in manifest["runtime"]["files"].items():
        assert entry["sha256"] == sha(fake_runtime[name])
        assert (small_bundle / entry["url"]).read_bytes() == fake_runtime[name].read_bytes()
    [variant] = manifest["variants"]
    assert variant == {
        "name": "small",
        "label": "Small",
        "runtime": "mediapipe",
        "url": f"models/small-{digest[:16]}.task",
        "sha256": digest,
        "size": small_task.stat().st_size,
        "format": "task",
        "chunk_size": CHUNK_SIZE,
        "chunk_sha256": [digest],  # one part: smaller than CHUNK_SIZE
        "multimodal": False,
        "max_tokens": 64,
    }
    # canonical: sorted keys, 2-space indent, trailing newline
    text = (small_bundle / "bundle.json").read_text()
    assert text == json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_chunk_hashes_cover_the_file(tmp_path, small_task, fake_runtime, monkeypatch):
    import modelforge.web.layout as bundle_module

    monkeypatch.setattr(bundle_module, "CHUNK_SIZE", 1000)
    out = tmp_path / "b"
    manifest = write_bundle(out, variants=[Variant(name="s", task=small_task, label="S", max_tokens=8,
                                                   top_k=1, temperature=0.0, random_seed=7)],
                            runtime=fake_runtime, title="T", runtime_version="1")
    [variant] = manifest["variants"]
    data = small_task.read_bytes()
    expected = [hashlib.sha256(data[i : i + 1000]).hexdigest() for i in range(0, len(data), 1000)]
    assert variant["chunk_size"] == 1000 and variant["chunk_sha256"] == expected
    assert (variant["top_k"], variant["temperature"], variant["random_seed"]) == (1, 0.0, 7)


def test_deterministic(tmp_path, small_task, fake_runtime):
    variants = [Variant(name="small", task=small_task, label="Small", max_tokens=64)]
    write_bundle(tmp_path / "a", variants=variants, runtime=fake_runtime, title="T", runtime_version="1")
    write_bundle(tmp_path / "b", variants=variants, runtime=fake_runtime, title="T", runtime_version="1")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_configs_match_the_served_files(small_bundle):
    configs = all_configs(bundle_files(small_bundle))
    for name, text in configs.items():
        assert (small_bundle / name).read_text() == text


def test_variants_keep_priority_order(tmp_path, tokenizer_model, fake_runtime):
    tasks = []
    for i in range(3):
        path = tmp_path / f"t{i}.task"
        write_task(path, tflite=fake_tflite(tmp_path / f"g{i}.tflite", seed=i), tokenizer=tokenizer_model,
                   params=gemma_params())
        tasks.append(path)
    variants = [Variant(name=n, task=t, label=n.upper(), max_tokens=32) for n, t in zip(["int4", "int8", "f16"], tasks)]
    manifest = write_bundle(tmp_path / "b", variants=variants, runtime=fake_runtime, title="T", runtime_version="1")
    assert [v["name"] for v in manifest["variants"]] == ["int4", "int8", "f16"]


def test_rewrites_a_previous_bundle_but_not_other_directories(tmp_path, small_task, fake_runtime):
    variants = [Variant(name="small", task=small_task, label="Small", max_tokens=64)]
    out = tmp_path / "out"
    write_bundle(out, variants=variants, runtime=fake_runtime, title="One", runtime_version="1")
    (out / "stale.txt").write_text("left over")
    write_bundle(out, variants=variants, runtime=fake_runtime, title="Two", runtime_version="1")
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "bundle.json").read_text())["title"] == "Two"
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(BundleError, match="refusing"):
        write_bundle(other, variants=variants, runtime=fake_runtime, title="T", runtime_version="1")
    assert (other / "thesis.tex").exists()
    assert not list(tmp_path.glob(".*staging*"))


def test_writable_sources_are_copied_not_linked(small_bundle, small_task):
    manifest = json.loads((small_bundle / "bundle.json").read_text())
    placed = small_bundle / manifest["variants"][0]["url"]
    assert placed.stat().st_ino != small_task.stat().st_ino


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "Bad Name", "label": "x", "max_tokens": 1}, "must match"),
        ({"name": "ok", "label": " ", "max_tokens": 1}, "label"),
        ({"name": "ok", "label": "x", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_variant_validation(kwargs, message, small_task):
    with pytest.raises(BundleError, match=message):
        Variant(task=small_task, **kwargs)


def test_refusals(tmp_path, small_task, fake_runtime):
    ok = Variant(name="a", task=small_task, label="A", max_tokens=8)
    with pytest.raises(BundleError, match="at least one"):
        write_bundle(tmp_path / "x", variants=[], runtime=fake_runtime, title="T", runtime_version="1")
    with pytest.raises(BundleError, match="unique"):
        write_bundle(tmp_path / "x", variants=[ok, ok], runtime=fake_runtime, title="T", runtime_version="1")
    with pytest.raises(BundleError, match="runtime files missing"):
        write_bundle(tmp_path / "x", variants=[ok], runtime={}, title="T", runtime_version="1")
    not_a_task = tmp_path / "plain.zip"
    shutil.make_archive(str(tmp_path / "plain"), "zip", root_dir=tmp_path, base_dir=small_task.name)
    with pytest.raises(BundleError, match="not a MediaPipe .task"):
        write_bundle(tmp_path / "x", variants=[Variant(name="b", task=not_a_task, label="B", max_tokens=8)],
                     runtime=fake_runtime, title="T", runtime_version="1")
    assert not (tmp_path / "x").exists()


def test_title_is_escaped(tmp_path, small_task, fake_runtime):
    write_bundle(tmp_path / "b", variants=[Variant(name="a", task=small_task, label="A", max_tokens=8)],
                 runtime=fake_runtime, title='<script>alert("x")</script> & co', runtime_version="1")
    html = (tmp_path / "b" / "index.html").read_text()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in html


def test_the_manifests_notice_reaches_bundle_json_and_the_pages_model_line(tmp_path, small_task, fake_runtime):
    variants = [Variant(name="a", task=small_task, label="A", max_tokens=8)]
    written = write_bundle(tmp_path / "b", variants=variants, runtime=fake_runtime, title="T", runtime_version="1", notice="Random weights.")
    assert written["notice"] == "Random weights."
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["notice"] == "Random weights."
    plain = write_bundle(tmp_path / "c", variants=variants, runtime=fake_runtime, title="T", runtime_version="1")
    assert "notice" not in plain  # bundles of manifests without one are unchanged
    app = (tmp_path / "b" / "app.js").read_text()
    assert "bundle.notice ? ` · Note: ${bundle.notice}`" in app


def test_the_tiny_manifests_say_their_weights_are_random_and_the_web_step_carries_it(tmp_path):
    from modelforge import api

    for name in ("tiny-medgemma-litertlm.yaml", "tiny-medgemma-text-only.yaml"):
        manifest = api.open_project(ROOT / "manifests" / name).manifest
        assert "random weights" in manifest.notice and "gibberish" in manifest.notice
    plan = api.plan(ROOT / "manifests" / "tiny-medgemma-litertlm.yaml", store_dir=tmp_path / "store").plan
    assert plan.node("web").params["notice"] == manifest.notice


def test_mediapipe_variants_pack_the_litertlm_targets_own_text_graphs(tmp_path):
    """One export per graph (issue #26): the tiny manifest's MediaPipe variants pack the litertlm
    target's text export (a decoder taking embeddings, and its embedder graph as TF_LITE_EMBEDDER;
    docs/evidence/mediapipe_embedder), through its very quantize node when the recipe is its own.
    The text decoder is exported once, not once more as a plain text_generation graph."""
    from modelforge import api

    plan = api.plan(ROOT / "manifests" / "tiny-medgemma-litertlm.yaml", store_dir=tmp_path / "store").plan
    text_exports = [step.name for step in plan.steps if step.kind == "litert_export" and step.params["part"] == "text"]
    assert text_exports == ["bundle.export_text"]

    def graph(task):
        (ref,) = [ref for ref in plan.node(task).inputs if ref.name == "graph"]
        return ref.node

    assert graph("web.task.tiny-int8") == "bundle.quantize.text_decoder"  # the bundle's recipe: its node
    assert graph("web.task.tiny-int4") == "web.quantize.tiny-int4"
    int4 = plan.node("web.quantize.tiny-int4")
    assert int4.params == {"recipe": "dynamic_wi4b32_afp32", "files": ["model.tflite", "embedder.tflite"], "overrides": []}
    assert [ref.node for ref in int4.inputs] == ["bundle.export_text"]


# ---------------------------------------------------------------------------------------------
# vendor
# ---------------------------------------------------------------------------------------------


def test_runtime_files_without_node_modules(tmp_path):
    (tmp_path / "package.json").write_text(json.dumps({"dependencies": {"@mediapipe/tasks-genai": "0.10.29"}}))
    with pytest.raises(RuntimeMissingError, match=r"npm ci --prefix"):
        runtime_files(tmp_path)


def test_runtime_files_version_mismatch(tmp_path):
    (tmp_path / "package.json").write_text(json.dumps({"dependencies": {"@mediapipe/tasks-genai": "0.10.29"}}))
    package = tmp_path / "node_modules" / "@mediapipe" / "tasks-genai"
    (package / "wasm").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"version": "0.10.27"}))
    with pytest.raises(RuntimeMissingError, match="0.10.27 is installed but .*package.json pins 0.10.29"):
        runtime_files(tmp_path)


def test_web_project_pins_the_runtime():
    package = json.loads((WEB_DIR / "package.json").read_text())
    pins = {"@mediapipe/tasks-genai": "0.10.29", "@litertjs/core": "2.5.3", "@huggingface/tokenizers": "0.2.0", "@huggingface/jinja": "0.5.11",
            "onnxruntime-web": "1.30.0"}
    assert package["dependencies"] == pins  # exact versions, no ranges
    lock = json.loads((WEB_DIR / "package-lock.json").read_text())
    for name, version in {**pins, "@litertjs/wasm-utils": "2.5.3"}.items():
        entry = lock["packages"][f"node_modules/{name}"]
        assert entry["version"] == version and entry["integrity"].startswith("sha512-")


@pytest.mark.skipif(not (WEB_DIR / "node_modules").is_dir(), reason="run `npm ci --prefix web` first")
def test_runtime_files_from_node_modules():
    files = runtime_files(WEB_DIR)
    assert set(files) == set(RUNTIME_FILES)
    assert runtime_version(WEB_DIR) == "0.10.29"
    assert files["genai_wasm_internal.wasm"].read_bytes()[:4] == b"\x00asm"
    assert b"LlmInference" in files["genai_bundle.mjs"].read_bytes()


# ---------------------------------------------------------------------------------------------
# The app's JavaScript unit test (node:test)
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_accumulator_node_tests():
    result = subprocess.run(["node", "--test", str(ROOT / "tests" / "web" / "accumulator.test.mjs")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_app_modules_parse():
    app = ROOT / "src" / "modelforge" / "web" / "app"
    for name in ("app.js", "accumulator.js"):
        result = subprocess.run(["node", "--check", "--input-type=module"], input=(app / name).read_text(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (name, result.stderr)


# ---------------------------------------------------------------------------------------------
# LiteRT.js variants: the vendored runtime with hashed names, the variant's files, shared by content
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def litertjs_runtime():
    from modelforge.web.vendor import litertjs_files, litertjs_versions

    try:
        return litertjs_files(WEB_DIR), litertjs_versions(WEB_DIR)
    except RuntimeMissingError as error:
        pytest.skip(str(error))


def _litertjs_variant(tmp_path, name: str, vision_seed: int = 3):
    from modelforge.web.layout import LitertjsVariant

    graphs = {graph: fake_tflite(tmp_path / f"{name}-{graph}.tflite", seed=seed)
              for graph, seed in (("model", 1), ("embedder", 2), ("vision_encoder", vision_seed), ("vision_adapter", 4))}
    return LitertjsVariant(
        name=name, label=name.title(), max_tokens=64, graphs=graphs, tokenizer=TINY / "tokenizer.json",
        tokenizer_config=TINY / "tokenizer_config.json", chat_template=TINY / "chat_template.jinja",
        generation={"decode": "decode", "cache_length": 256},
    )


def test_litertjs_bundle(tmp_path, litertjs_runtime):
    from modelforge.web.vendor import LITERTJS_FILES

    files, versions = litertjs_runtime
    # Two variants with the same vision graphs and tokenizer: those files are laid out once.
    variants = [_litertjs_variant(tmp_path, "float"), _litertjs_variant(tmp_path, "quantized")]
    out = tmp_path / "bundle"
    manifest = write_bundle(out, variants=variants, title="T", litertjs=files, litertjs_versions=versions)
    assert "runtime" not in manifest  # no MediaPipe variant, no MediaPipe runtime
    assert not any(name.startswith("runtime/genai") for name in bundle_files(out))
    assert manifest["litertjs"]["packages"]["@litertjs/core"] == versions["@litertjs/core"]
    runtime = manifest["litertjs"]["files"]
    assert set(runtime) == set(LITERTJS_FILES)
    for name, entry in runtime.items():
        served = (out / entry["url"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(served).hexdigest() and entry["size"] == len(served)
        assert entry["url"].startswith(f"runtime/{name.rsplit('.', 1)[0]}-{entry['sha256'][:16]}.")
    # The references between vendored files name the content-hashed files (no bare import, no plain name).
    core = (out / runtime["litertjs_core.mjs"]["url"]).read_text()
    assert f'from "./{runtime["litertjs_wasm_utils.mjs"]["url"].split("/")[1]}"' in core and '"@litertjs/wasm-utils"' not in core
    loader = (out / runtime["litert_wasm_jspi_internal.js"]["url"]).read_text()
    assert f'locateFile("{runtime["litert_wasm_jspi_internal.wasm"]["url"].split("/")[1]}")' in loader
    first, second = manifest["variants"]
    assert first["runtime"] == "litertjs" and first["multimodal"] is True
    assert set(first["files"]) == {"model", "embedder", "vision_encoder", "vision_adapter", "tokenizer", "tokenizer_config", "chat_template"}
    assert first["files"]["tokenizer"] == second["files"]["tokenizer"]
    assert first["files"]["model"] == second["files"]["model"]  # same bytes, same file
    assert first["files"]["model"]["url"].endswith(".tflite")
    assert first["size"] == sum(entry["size"] for entry in first["files"].values())
    for entry in first["files"].values():
        assert entry["chunk_sha256"] == [entry["sha256"]]
    assert first["generation"] == {"decode": "decode", "cache_length": 256}


def test_litertjs_refusals(tmp_path, litertjs_runtime, fake_runtime, small_task):
    from modelforge.web.layout import LitertjsVariant

    files, versions = litertjs_runtime
    variant = _litertjs_variant(tmp_path, "float")
    with pytest.raises(BundleError, match="need the LiteRT.js runtime files"):
        write_bundle(tmp_path / "x", variants=[variant], runtime=fake_runtime, title="T", runtime_version="1")
    not_a_graph = tmp_path / "model.tflite"
    not_a_graph.write_bytes(b"\x00" * 64)
    broken = LitertjsVariant(**{**variant.__dict__, "graphs": {**variant.graphs, "model": not_a_graph}})
    with pytest.raises(BundleError, match="is not a .tflite graph"):
        write_bundle(tmp_path / "x", variants=[broken], title="T", litertjs=files, litertjs_versions=versions)
    with pytest.raises(BundleError, match="the vision encoder and adapter come together"):
        LitertjsVariant(**{**variant.__dict__, "graphs": {k: v for k, v in variant.graphs.items() if k != "vision_adapter"}})
    # A MediaPipe variant beside it still needs the MediaPipe runtime.
    with pytest.raises(BundleError, match="runtime files missing"):
        write_bundle(tmp_path / "x", variants=[variant, Variant(name="t", task=small_task, label="T", max_tokens=8)],
                     title="T", litertjs=files, litertjs_versions=versions)
