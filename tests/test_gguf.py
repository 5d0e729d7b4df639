"""The gguf steps on the tiny model (src/modelforge/steps/gguf/): the pinned llama.cpp converter turns
the text-only checkpoint into GGUF, llama.cpp runs it (llama-cpp-python, compiled by tools/setup.sh)
and gives PyTorch's greedy tokens; llama.cpp's quantizer makes Q4_K_M; both are byte-identical when
made twice; a conversion without Gemma's +1 norm offset fails parity; the vision tower becomes an
mmproj GGUF; the Modelfile parses as Ollama's parser reads it. Skipped only where llama_cpp is not
installed."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, copy_project

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed: tools/setup.sh compiles it from the pinned sdist (tools/llama-cpp-python.txt)",
)

PROMPTS = ["What are the symptoms of pneumonia?", "The cardiac silhouette is within normal limits."]
STEPS = 24  # with the chat-formatted prompt, past the tiny model's 32-token sliding window


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    """The tiny manifest's text-only Gemma3ForCausalLM (modelforge's hf_text_only output)."""
    from modelforge import api

    project = copy_project(tmp_path_factory.mktemp("gguf-project"))
    result = api.build(project / "manifests" / "tiny-medgemma-text-only.yaml", store_dir=project / "store")
    return result.out_dir / "text"


@pytest.fixture(scope="module")
def f32(text_checkpoint, tmp_path_factory):
    from modelforge.steps.gguf.convert import convert

    work = tmp_path_factory.mktemp("gguf-f32")
    out = work / "out" / "model.gguf"
    convert(text_checkpoint, out, part="text", type="F32", name="tiny-medgemma", work=work)
    return out


def test_setup_and_the_converter_pin_the_same_sdist():
    from modelforge.steps.gguf import converter

    pin = [line for line in (ROOT / "tools" / "llama-cpp-python.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert pin == [f"llama-cpp-python=={converter.LLAMA_CPP_PYTHON} --hash=sha256:{converter.SDIST_SHA256}"]
    assert f"llama_cpp_python=={converter.LLAMA_CPP_PYTHON}" in (ROOT / "constraints.txt").read_text().splitlines()


def test_a_missing_or_altered_sdist_is_refused_in_one_line(tmp_path, monkeypatch):
    from modelforge.errors import StepFailed
    from modelforge.steps.gguf import converter

    monkeypatch.setenv("MODELFORGE_TOOLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELFORGE_LLAMA_CPP_SDIST", str(tmp_path / "absent.tar.gz"))
    with pytest.raises(StepFailed, match="missing; run tools/setup.sh"):
        converter.converter_dir()
    (tmp_path / "absent.tar.gz").write_bytes(b"not the sdist")
    with pytest.raises(StepFailed, match="not the pinned"):
        converter.converter_dir()


def read_gguf(path: Path) -> dict:
    """Metadata and tensor types through the converter's own gguf-py, in a child (it stays off our path)."""
    from modelforge.steps.gguf import converter

    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import gguf\n"
        "r = gguf.GGUFReader(sys.argv[2]); fields = {}\n"
        "for k, v in r.fields.items():\n"
        "    if k.startswith('GGUF.') or k.startswith('tokenizer.ggml.') and k not in ('tokenizer.ggml.model',): continue\n"
        "    fields[k] = v.contents()\n"
        "print(json.dumps({'fields': fields, 'tensors': {t.name: [t.tensor_type.name, [float(x) for x in t.data.reshape(-1)[:4]]] for t in r.tensors}}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(converter.converter_dir() / "gguf-py"), str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@needs_llama_cpp
def test_f32_gguf_gives_pytorchs_greedy_tokens_and_logits(f32, text_checkpoint, tmp_path):
    from modelforge.steps.gguf import parity

    report, _ = parity.measure(f32, text_checkpoint, PROMPTS, STEPS, work=tmp_path)
    print("F32 parity:", json.dumps(report, sort_keys=True))
    assert report["tokenizer_equal"]
    # Teacher-forced top-1 agreement 1.0 along PyTorch's greedy tokens: llama.cpp decoding on its own
    # repeats every one of them.
    assert report["top1_agreement"] == 1.0 and report["greedy_free_running_steps"] == [STEPS] * len(PROMPTS)
    assert report["max_abs_logit"] < 0.05


def test_conversion_is_byte_identical_from_another_directory(f32, text_checkpoint, tmp_path):
    """The converter names the model after its input directory; the step shows it one named after the
    model, so a second conversion from elsewhere writes the same bytes."""
    import shutil

    from modelforge.steps.gguf.convert import convert

    elsewhere = tmp_path / "another-place"
    shutil.copytree(text_checkpoint, elsewhere)
    again = tmp_path / "again.gguf"
    convert(elsewhere, again, part="text", type="F32", name="tiny-medgemma", work=tmp_path / "work")
    assert sha256(again) == sha256(f32)
    fields = read_gguf(again)["fields"]
    assert fields["general.name"] == "tiny-medgemma"
    # The tiny model slides every other layer, not llama.cpp's default five in six: the pattern is written.
    assert fields["gemma3.attention.sliding_window_pattern"] == [True, False]


BROKEN_WORKER = """
from modelforge.steps.gguf import convert_child, worker
from modelforge.steps.workers import serve

prepare = convert_child.prepare


def broken(directory):
    prepare(directory)
    import conversion.gemma
    conversion.gemma.Gemma3Model.norm_shift = lambda self, name: 0.0  # Gemma 3's RMSNorm +1, gone


convert_child.prepare = broken
serve(worker.ACTIONS)
"""


@needs_llama_cpp
def test_a_conversion_without_gemmas_norm_offset_fails_parity(text_checkpoint, tmp_path, monkeypatch):
    """The pinned converter with Gemma3Model.norm_shift returning 0 (run by a worker module of this
    test's): the parity thresholds a correct conversion meets catch it."""
    import os

    from modelforge.steps.gguf import parity
    from modelforge.steps.gguf.convert import convert

    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "broken_gguf_worker.py").write_text(BROKEN_WORKER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "modules"), os.environ.get("PYTHONPATH", "")]))
    broken = tmp_path / "broken.gguf"
    convert(text_checkpoint, broken, part="text", type="F32", name="tiny-medgemma", work=tmp_path / "work", module="broken_gguf_worker")
    report, _ = parity.measure(broken, text_checkpoint, PROMPTS, STEPS, work=tmp_path / "parity")
    print("broken parity:", json.dumps(report, sort_keys=True))
    assert report["max_abs_logit"] > 1.0 and report["top1_agreement"] < 0.45 and report["mean_kl"] > 1.0


def test_vision_tower_and_projector_become_an_mmproj_gguf(tmp_path):
    from modelforge.steps.gguf.convert import convert

    out = tmp_path / "mmproj.gguf"
    convert(TINY, out, part="vision", type="F16", name="tiny-medgemma", work=tmp_path)
    read = read_gguf(out)
    fields, tensors = read["fields"], read["tensors"]
    assert fields["general.type"] == "mmproj" and fields["general.architecture"] == "clip"
    assert fields["clip.projector_type"] == "gemma3" and fields["clip.has_vision_encoder"] is True
    assert tensors["mm.input_projection.weight"][0] == "F16"
    assert tensors["v.patch_embd.weight"][0] == "F32"
    assert not any(name.startswith(("blk.", "token_embd")) for name in tensors)
    # Gemma 3's projector norm gets the converter's +1, as the decoder's norms do.
    from safetensors import safe_open

    index = json.loads((TINY / "model.safetensors.index.json").read_text())["weight_map"]
    name = next(key for key in index if key.endswith("mm_soft_emb_norm.weight"))
    with safe_open(TINY / index[name], "pt") as handle:
        source = handle.get_tensor(name).float().reshape(-1)[:4].tolist()
    assert tensors["mm.soft_emb_norm.weight"][1] == pytest.approx([value + 1 for value in source], abs=1e-6)


# ------------------------------------------------------------------------------ the Modelfile


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """Ollama's parser.ParseFile (ollama/ollama parser/parser.go at fb30760), its state machine rune
    for rune: (command, argument) pairs, FROM as `model`, PARAMETER as its parameter's name. Raises
    ValueError where Ollama's would fail."""
    NIL, NAME, VALUE, PARAMETER, COMMENT = range(5)
    commands = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message", "requires"}

    def unquote(value):
        if value[:3] == '"""':
            return (value[3:-3], True) if len(value) >= 6 and value[-3:] == '"""' else ("", False)
        if value[:1] == '"':
            return (value[1:-1], True) if len(value) >= 2 and value[-1] == '"' else ("", False)
        return value, True

    def step(r, state):
        if state == NIL:
            return (COMMENT, "") if r == "#" else (NIL, "") if r in " \t\r\n" else (NAME, r)
        if state == NAME:
            if r.isascii() and r.isalpha():
                return NAME, r
            if r in " \t":
                return VALUE, ""
            raise ValueError("command must be one of ...")
        if state == VALUE:
            return (NIL, r) if r in " \t\r\n" else (VALUE, r)
        if state == PARAMETER:
            if r.isascii() and (r.isalnum() or r == "_"):
                return PARAMETER, r
            if r in " \t":
                return VALUE, ""
            raise ValueError("unexpected EOF")
        if state == COMMENT:
            return (NIL, "") if r in "\r\n" else (COMMENT, "")
        raise ValueError(state)

    out, name, buffer, state = [], "", "", NIL
    for r in text:
        following, r = step(r, state)
        if following != state:
            if state == NAME:
                if buffer.lower() not in commands:
                    raise ValueError(f"invalid command {buffer!r}")
                if buffer.lower() == "parameter":
                    following = PARAMETER
                else:
                    name = "model" if buffer.lower() == "from" else buffer.lower()
            elif state == PARAMETER:
                name = buffer
            elif state == VALUE:
                value, ok = unquote(buffer.strip())
                if not ok or r in " \t":
                    buffer += r
                    continue
                out.append((name, value))
            buffer, state = "", following
        if r and r.isprintable():  # Go strconv.IsPrint; a quoted newline got in through the branch above
            buffer += r
    if state == VALUE:
        value, ok = unquote(buffer.strip())
        if not ok:
            raise ValueError("unexpected EOF")
        out.append((name, value))
    elif state not in (NIL, COMMENT):
        raise ValueError("unexpected EOF")
    if not any(command == "model" for command, _ in out):
        raise ValueError("no FROM line")
    return out


def test_the_modelfile_parses_as_ollama_reads_it_with_the_projector_as_a_second_from():
    from modelforge.steps.gguf.modelfile import GEMMA3_TEMPLATE, modelfile_text

    text = modelfile_text(model_file="tiny-medgemma-Q4_K_M.gguf", projector_file="mmproj-tiny-medgemma-F16.gguf",
                          stop=["<eos>", "<end_of_turn>"], sampler={"type": "top_k", "k": 40, "p": 0.95, "temperature": 0.8}, num_ctx=1024)
    assert parse_modelfile(text) == [
        ("model", "./tiny-medgemma-Q4_K_M.gguf"), ("model", "./mmproj-tiny-medgemma-F16.gguf"), ("template", GEMMA3_TEMPLATE),
        ("stop", "<eos>"), ("stop", "<end_of_turn>"), ("top_k", "40"), ("top_p", "0.95"), ("temperature", "0.8"), ("num_ctx", "1024"),
    ]


def test_the_go_template_agrees_with_the_sources_chat_template_and_a_foreign_one_is_refused():
    from modelforge.steps.gguf.modelfile import template_mismatches

    assert template_mismatches((TINY / "chat_template.jinja").read_text(), "<bos>") == []
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    assert len(template_mismatches(chatml, "<bos>")) == 3


# ------------------------------------------------------------------------------ the target, end to end


@needs_llama_cpp
def test_the_tiny_gguf_manifest_builds_byte_identically_twice_with_parity_in_the_lock(tmp_path):
    from modelforge import api
    from modelforge.lock import read_lock
    from modelforge.provenance import SIGNATURE_FILES

    first_project = copy_project(tmp_path / "first")
    first = api.build(first_project / "manifests" / "tiny-medgemma-gguf.yaml", store_dir=tmp_path / "store-1")
    second_project = copy_project(tmp_path / "second")
    second = api.build(second_project / "manifests" / "tiny-medgemma-gguf.yaml", store_dir=tmp_path / "store-2")
    out = first.out_dir / "gguf"
    names = sorted(path.name for path in out.iterdir() if path.name not in SIGNATURE_FILES)
    assert names == ["Modelfile", "mmproj-tiny-medgemma-F16.gguf", "tiny-medgemma-Q4_K_M.gguf"]
    for name in names:
        assert (out / name).read_bytes() == (second.out_dir / "gguf" / name).read_bytes(), name
    assert first.project.lock_path.read_bytes() == second.project.lock_path.read_bytes()
    # ... and they are the bytes the committed lock pins.
    assert first.project.lock_path.read_bytes() == (ROOT / "lock" / "tiny-medgemma-gguf.lock").read_bytes()
    lock = read_lock(first.project.lock_path)
    assert lock.targets["gguf"].files["tiny-medgemma-Q4_K_M.gguf"].sha256 == sha256(out / "tiny-medgemma-Q4_K_M.gguf")
    check = lock.checks["gguf.parity"]
    print("tiny Q4_K_M parity (lock):", json.dumps(check, sort_keys=True, default=str))
    assert check["passed"] is True and check["tokenizer_equal"] is True
    assert check["vision_cosine"] >= 0.999 and check["vision_tokens"] == [[4, 4], [4, 4]]  # llama.cpp's mtmd vs the processor
    # llama.cpp keeps a non-square image's aspect and pads it; the processor stretches it: recorded.
    assert check["vision_cosine_non_square"] < 0.99
    commands = parse_modelfile((out / "Modelfile").read_text())
    assert commands[:2] == [("model", "./tiny-medgemma-Q4_K_M.gguf"), ("model", "./mmproj-tiny-medgemma-F16.gguf")]
    fields = read_gguf(out / "tiny-medgemma-Q4_K_M.gguf")["fields"]
    assert fields["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert "<start_of_turn>" in fields["tokenizer.chat_template"]
