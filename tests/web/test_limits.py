"""The web variants' size limits (src/modelforge/web/limits.py): the prediction against the real
`.task` files the toolchain wrote for the tiny model, the real MedGemma 4B manifest planned against
its reference tensor list, and the planner's refusal of variants that cannot fit."""

from __future__ import annotations

import zipfile
from dataclasses import replace

import pytest

from conftest import MANIFESTS, REFERENCE
from modelforge.errors import PlanError
from modelforge.manifest import load_manifest, manifest_digest
from modelforge.manifest.parts import QUANTIZER_RECIPES
from modelforge.manifest.targets.web_bundle import WebVariantSpec
from modelforge.planner import make_plan
from modelforge.testing.reference import facts_from_shapes, load_tensor_shapes, reference_facts, reference_files
from modelforge.web import limits

REAL = MANIFESTS / "medgemma-1.5-litertlm.yaml"
RUNTIME = {"version": "0.10.29", "files": {}, "onnxruntime_web": {"versions": {"onnxruntime-web": "1.30.0"}, "files": {}}}
EMBEDDING = "language_model.model.embed_tokens.weight"


def _plan(manifest, facts):
    return make_plan(manifest, replace(facts, web_runtime=RUNTIME), str(REAL.relative_to(MANIFESTS.parent)), manifest_digest(manifest))


def _with_variants(manifest, *variants):
    web = manifest.targets["web"].model_copy(update={"variants": tuple(variants)})
    return manifest.model_copy(update={"targets": {**manifest.targets, "web": web}})


def _variant(name, recipe):
    return WebVariantSpec.model_validate({"name": name, "label": name, "from": "bundle", "recipe": recipe})


def test_every_quantizer_recipe_has_a_known_storage():
    for recipe in QUANTIZER_RECIPES:
        storage = limits.recipe_storage(recipe)
        assert storage.bits in (2, 4, 8) and storage.block in (None, 32, 64), recipe
    assert limits.recipe_storage("dynamic_wi4b32_afp32") == limits.RecipeStorage(4, 32)
    assert limits.recipe_storage("dynamic_wi8_afp32") == limits.RecipeStorage(8, None)
    with pytest.raises(limits.WebLimitError, match="cannot tell how recipe 'fp16' stores weights"):
        limits.recipe_storage("fp16")


def test_the_real_manifest_web_variant_fits_and_its_size_is_recorded():
    """MedGemma 1.5 4B, text decoder 3.88 B parameters, int4 in blocks of 32: ~2.2 GB, embedding
    table 262,208 × 2,560 / 2 bytes; the .task packs the litertlm target's export, whose embedder
    graph holds that table again (0.38 GB with its scales): ~2.58 GB, under the 3 GiB limit."""
    manifest = load_manifest(REAL)
    plan = _plan(manifest, reference_facts())
    predicted = plan.facts["web"]
    assert set(predicted) == {"web.task.medgemma-int4", "web.medgemma-int4-images"}  # the image variant: tests/web/test_ortweb_plan.py
    int4 = predicted["web.task.medgemma-int4"]
    assert int4["largest_tensor"] == EMBEDDING
    assert int4["largest_tensor_bytes"] == 262_208 * 2_560 // 2 == 335_626_240
    # data 3,879,895,040 / 2 + float16 scales per 32 + float32 norms, + the embedder's table and its scales
    table = 262_208 * 2_560 // 2 + 262_208 * 2_560 // 32 * 2
    assert int4["weight_bytes"] == 3_879_895_040 // 2 + 3_879_895_040 // 32 * 2 + 368_128 * 4 + table
    assert 2.55e9 < int4["task_bytes"] < 2.6e9
    assert int4["task_bytes"] < limits.MAX_TASK_BYTES
    # A prediction is a fact of the plan, never a parameter: no step key depends on it.
    assert all("task_bytes" not in step.params_json for step in plan.steps)


def test_the_int8_variant_at_4b_is_refused_naming_the_variant_and_both_limits():
    manifest = _with_variants(load_manifest(REAL), _variant("medgemma-int8", "dynamic_wi8_afp32"), _variant("medgemma-int4", "dynamic_wi4b32_afp32"))
    with pytest.raises(PlanError, match=r"targets\.web: variant 'medgemma-int8' \(dynamic_wi8_afp32\) cannot run in the browser") as error:
        _plan(manifest, reference_facts())
    message = str(error.value)
    assert "4.59 GB" in message and "wasm32 heap" in message  # ~3,880 MB of int8 weights, + the embedder's 671 MB table
    assert f"{EMBEDDING} at 0.67 GB" in message and "maxStorageBufferBindingSize" in message
    assert "docs/web-limits.md" in message


def _facts_with(shapes):
    config = __import__("json").loads((REFERENCE / "mlx-community_gemma-3-4b-it-bf16-config.json").read_text())
    return facts_from_shapes(shapes, "BF16", config, reference_files())


def test_a_variant_whose_total_is_too_large_is_refused_even_when_every_tensor_fits():
    """4B layers with a 100k vocabulary: the int8 embedding (256 MB) fits a binding, the 3.76 GB file (with the embedder's copy of the table) does not."""
    shapes, _ = load_tensor_shapes()
    shapes[EMBEDDING] = (100_000, 2_560)
    manifest = _with_variants(load_manifest(REAL), _variant("big", "dynamic_wi8_afp32"))
    with pytest.raises(PlanError, match=r"variant 'big' .* its \.task would be about 3\.76 GB") as error:
        _plan(manifest, _facts_with(shapes))
    assert "largest weight" not in str(error.value)


def test_a_variant_with_one_tensor_too_large_is_refused_even_when_the_file_fits():
    """Two 4B layers with a 300k vocabulary: a 768 MB int8 embedding in a 0.9 GB file."""
    shapes, _ = load_tensor_shapes()
    shapes = {name: shape for name, shape in shapes.items() if ".layers." not in name or any(f".layers.{i}." in name for i in (0, 1))}
    shapes[EMBEDDING] = (300_000, 2_560)
    manifest = _with_variants(load_manifest(REAL), _variant("wide", "dynamic_wi8_afp32"))
    with pytest.raises(PlanError, match=rf"variant 'wide' .* its largest weight, {EMBEDDING} at 0\.77 GB") as error:
        _plan(manifest, _facts_with(shapes))
    assert ".task would be" not in str(error.value)
    # int4 in blocks of 32 halves it: accepted.
    plan = _plan(_with_variants(load_manifest(REAL), _variant("wide", "dynamic_wi4b32_afp32")), _facts_with(shapes))
    assert plan.facts["web"]["web.task.wide"]["largest_tensor_bytes"] == 300_000 * 2_560 // 2


# ---------------------------------------------------------------------------------------------
# The prediction against what litert-torch + ai-edge-quantizer really wrote (the tiny model).
# ---------------------------------------------------------------------------------------------


def _weight_buffers(task_path, member="TF_LITE_PREFILL_DECODE"):
    """[(tensor type, shape, bytes)] of every constant buffer of one of the .task's graphs, and its size."""
    from ai_edge_litert import schema_py_generated as schema

    with zipfile.ZipFile(task_path) as archive:
        data = archive.read(member)
    model = schema.Model.GetRootAsModel(data, 0)
    names = {value: key for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    seen, out = set(), []
    for index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(index)
        for position in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(position)
            buffer = model.Buffers(tensor.Buffer())
            if tensor.Buffer() in seen or not buffer.DataLength():
                continue
            seen.add(tensor.Buffer())
            shape = tuple(tensor.ShapeAsNumpy().tolist()) if tensor.ShapeLength() else ()
            out.append((names[tensor.Type()], shape, buffer.DataLength()))
    return out, len(data)


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "recipe", "dtype"), [("tiny-int8", "dynamic_wi8_afp32", "INT8"), ("tiny-int4", "dynamic_wi4b32_afp32", "INT4")])
def test_the_prediction_matches_the_tiny_models_real_task(tiny_web_bundle, variant, recipe, dtype):
    from modelforge.safetensors_io import read_header

    (task,) = (tiny_web_bundle / "models").glob(f"{variant}-*.task")
    buffers, graph_bytes = _weight_buffers(task)
    storage = limits.recipe_storage(recipe)
    quantized = [(shape, size) for kind, shape, size in buffers if kind == dtype]
    assert quantized
    for shape, size in quantized:  # every quantized weight has exactly the predicted size
        assert size == storage.tensor_bytes(shape)[0], shape
    if storage.block:  # and its float16 block scales theirs
        scales = sorted(size for kind, shape, size in buffers if kind == "FLOAT16")
        assert sorted(storage.tensor_bytes(shape)[1] for shape, _ in quantized) == scales

    shapes = {}
    for shard in sorted((MANIFESTS.parent / "fixtures" / "tiny-medgemma").glob("*.safetensors")):
        tensors, _ = read_header(shard)
        shapes.update({name: tuple(info.shape) for name, info in tensors.items() if name.startswith("language_model.")})
    prediction = limits.predict_task_size(shapes, recipe, 0)
    # The largest buffer is the embedding table, once (the LM head shares it).
    embedding = shapes[EMBEDDING]
    assert max(size for _, size in quantized) == prediction.largest_tensor_bytes == storage.tensor_bytes(embedding)[0]
    assert sum(1 for shape, _ in quantized if shape == embedding) == 1
    # Structure besides the weights stays within the per-layer allowance.
    assert graph_bytes - sum(size for *_, size in buffers) < limits.GRAPH_BYTES_PER_LAYER * prediction.layers
    # The embedder graph (the litertlm target's export: TF_LITE_EMBEDDER) holds the table again, quantized alike.
    embedder_buffers, embedder_bytes = _weight_buffers(task, "TF_LITE_EMBEDDER")
    assert [(shape, size) for kind, shape, size in embedder_buffers if kind == dtype] == [(embedding, storage.tensor_bytes(embedding)[0])]
    with_embedder = limits.predict_task_size(shapes, recipe, 0, embedder=True)
    assert with_embedder.task_bytes - prediction.task_bytes == sum(storage.tensor_bytes(embedding)) + limits.GRAPH_BYTES_PER_LAYER
    assert graph_bytes + embedder_bytes <= with_embedder.task_bytes - limits.TASK_OVERHEAD_BYTES


def _wasm_memory_maximum(path) -> int | None:
    """Pages a .wasm file's memory may grow to: its memory section's, or its imported memory's, maximum."""
    data = path.read_bytes()

    def leb(offset):
        value = shift = 0
        while True:
            byte = data[offset]
            offset += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, offset

    def limits_at(offset):
        flags = data[offset]
        _, offset = leb(offset + 1)
        return leb(offset)[0] if flags & 1 else None

    offset = 8
    while offset < len(data):
        section, size_offset = data[offset], offset + 1
        size, start = leb(size_offset)
        if section == 5:  # memory
            return limits_at(leb(start)[1])
        if section == 2:  # imports: a threaded build imports its (shared) memory
            count, cursor = leb(start)
            for _ in range(count):
                for _name in range(2):
                    length, cursor = leb(cursor)
                    cursor += length
                kind = data[cursor]
                cursor += 1
                if kind == 2:
                    return limits_at(cursor)
                if kind == 0:
                    _, cursor = leb(cursor)
                elif kind == 1:
                    cursor += 1
                    flags = data[cursor]
                    _, cursor = leb(cursor + 1)
                    cursor = leb(cursor)[1] if flags & 1 else cursor
                elif kind == 3:
                    cursor += 2
                else:
                    _, cursor = leb(cursor + 1)
        offset = start + size
    return None


def test_the_litertjs_heap_is_what_the_vendored_wasm_builds_allow():
    """Every build of @litertjs/core the page may load caps its memory at 32,768 pages (2 GiB), the
    limit the planner holds a LiteRT.js variant's graphs to."""
    builds = sorted((MANIFESTS.parent / "web" / "node_modules" / "@litertjs" / "core" / "wasm").glob("*.wasm"))
    if not builds:
        pytest.skip("web runtime not vendored: npm ci --prefix web")
    assert {build.name: _wasm_memory_maximum(build) * 65536 for build in builds} == {build.name: limits.LITERTJS_HEAP_MAX for build in builds}
    assert limits.MAX_LITERTJS_GRAPH_BYTES < limits.LITERTJS_HEAP_MAX
