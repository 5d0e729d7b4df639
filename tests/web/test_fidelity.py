"""The fidelity gate in the browser: the page of `modelforge build manifests/tiny-medgemma-litertlm.yaml`,
in headless Debian Chromium (software WebGPU, and the wasm CPU backend), is given the parity step's
test card and a question as a user gives them (file picker or drop, typing, the Ask button), and its
greedy answer is compared token by token with PyTorch's on the same float checkpoint: identical for
the float LiteRT.js variant, within the manifest's parity threshold for the int8 one.

PyTorch's answer is computed on the processor's own input_ids and pixel_values, causal inside the image
block (parity_phases.reference_image_answers' "causal": what a prefill/decode loop computes), to the
first stop token or the variant's max_tokens.

The same page also streams its answer, stops mid-answer when Stop is pressed (and answers the next
question as a fresh page does), and reads an image pasted into the question box as one from the file
picker (test_litertjs_streams_stops_and_takes_a_pasted_image)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from modelforge.web.serve import serve

from .conftest import ROOT, TINY
from .test_browser import ANSWERED, CHROMIUM, SETTLED, WEBGPU, playwright, session_factory  # noqa: F401 (fixtures)

MANIFEST = ROOT / "manifests" / "tiny-medgemma-litertlm.yaml"
IMAGE_PROMPT = "Describe the chest X-ray findings."
TEXT_PROMPT = "What are the symptoms of pneumonia?"
# With the image, a prompt of 65 tokens: past the 32 from which onnxruntime-web 1.30's flash attention
# went wrong on narrow subgroups (docs/evidence/ortweb_gqa; this question's first token departed).
LONG_PROMPT = ("The patient reports chest pain radiating to the left arm. Describe the chest X-ray findings in detail. "
               "Explain the treatment options for a child.")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)"),
]


def _manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def _variant(name: str) -> dict:
    return next(v for v in _manifest()["targets"]["web"]["variants"] if v["name"] == name)


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    from modelforge.steps.parity_phases import test_cards

    size = _processor_size()
    return test_cards(size, tmp_path_factory.mktemp("cards"))[0]


def _processor_size() -> tuple[int, int]:
    import json

    size = json.loads((TINY / "preprocessor_config.json").read_text())["size"]
    return size["height"], size["width"]


@pytest.fixture(scope="module")
def reference(card) -> dict:
    """PyTorch float32, greedy: {"image": (prompt ids, answer ids), "text": (...), "long": (...)} for
    IMAGE_PROMPT with the image, TEXT_PROMPT, LONG_PROMPT with the image, each answer as long as the
    longest max_tokens of the web variants leaves room for (_expected cuts it to a variant's)."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    from modelforge.steps.parity_phases import reference_image_answers

    max_tokens = max(v.get("max_tokens", 0) for v in _manifest()["targets"]["web"]["variants"])
    stop_tokens = _manifest()["targets"]["bundle"]["metadata"]["stop_tokens"]
    processor = AutoProcessor.from_pretrained(TINY)
    model = Gemma3ForConditionalGeneration.from_pretrained(TINY, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": IMAGE_PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with Image.open(card) as image:
        image_ids = processor(text=text, images=image.convert("RGB"), add_special_tokens=False)["input_ids"][0]
    image_answer = reference_image_answers(model, processor, IMAGE_PROMPT, max_tokens - len(image_ids), stop_tokens, [card])["causal"][0]
    long_text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": LONG_PROMPT}]}],
                                              add_generation_prompt=True, tokenize=False)
    with Image.open(card) as image:
        long_ids = processor(text=long_text, images=image.convert("RGB"), add_special_tokens=False)["input_ids"][0]
    long_answer = reference_image_answers(model, processor, LONG_PROMPT, max_tokens - len(long_ids), stop_tokens, [card])["causal"][0]

    tokenizer = processor.tokenizer
    text_ids = tokenizer.apply_chat_template([{"role": "user", "content": TEXT_PROMPT}], add_generation_prompt=True, tokenize=True)
    text_ids = list(text_ids["input_ids"] if hasattr(text_ids, "keys") else text_ids)
    stop_ids = [tokenizer.convert_tokens_to_ids(token) for token in stop_tokens]
    with torch.no_grad():
        generated = model.generate(torch.tensor([text_ids]), max_new_tokens=max_tokens - len(text_ids), do_sample=False,
                                   eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    text_answer = generated[0, len(text_ids):].tolist()
    text_answer = text_answer[: next((i for i, token in enumerate(text_answer) if token in stop_ids), len(text_answer))]
    return {"image": (list(image_ids), image_answer), "text": (text_ids, text_answer), "long": (list(long_ids), long_answer)}


def _expected(reference: dict, case: str, variant: str) -> tuple[list[int], list[int]]:
    """reference[case] as `variant` answers it: the page stops where the variant's max_tokens ends the answer."""
    prompt, answer = reference[case]
    return prompt, answer[: _variant(variant)["max_tokens"] - len(prompt)]


def _ask(session, question: str) -> tuple[list[int], list[int]]:
    """Type the question, press Ask, wait for the answer: (prompt ids, answer ids) the page used."""
    session.page.fill("#prompt", "")
    session.page.locator("#prompt").press_sequentially(question)
    started = time.monotonic()
    session.page.click("#send")
    session.page.locator(ANSWERED).wait_for(timeout=300_000)
    print(f"\n{session.page.get_attribute('body', 'data-variant')} on {session.page.get_attribute('body', 'data-backend')}: "
          f"answered {question!r} in {time.monotonic() - started:.1f} s ({session.page.inner_text('#answer-state')})")
    assert session.state() == "ready", session.diagnostics()
    assert session.page.inner_text("#answer").strip(), session.diagnostics()
    answer = session.page.locator("#answer")
    ids = lambda attribute: [int(token) for token in (answer.get_attribute(attribute) or "").split(",") if token]  # noqa: E731
    return ids("data-prompt-tokens"), ids("data-tokens")


def _drop(session, path: Path) -> None:
    """Drag and drop a file onto the question form, as a user drops one from the desktop."""
    data = list(path.read_bytes())
    transfer = session.page.evaluate_handle(
        "([bytes, name]) => { const t = new DataTransfer();"
        " t.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'})); return t; }",
        [data, path.name],
    )
    session.page.dispatch_event("#chat", "drop", {"dataTransfer": transfer})


def _open(session, url: str, variant: str, backend: str, runtime: str = "LiteRT.js") -> None:
    started = time.monotonic()
    assert session.open(url, timeout_ms=300_000) == "ready", session.diagnostics()
    print(f"\n{variant} on {backend}: ready in {time.monotonic() - started:.1f} s")
    assert session.page.get_attribute("body", "data-variant") == variant, session.diagnostics()
    assert session.page.get_attribute("body", "data-backend") == backend, session.diagnostics()
    assert runtime in session.text("#model-info")


@pytest.mark.parametrize("backend", ["webgpu", "wasm"])
def test_float_variant_answers_exactly_as_pytorch(tiny_web_bundle, session_factory, card, reference, backend):
    with serve(tiny_web_bundle) as server:
        session = session_factory(WEBGPU)
        query = "?variant=tiny-float" + ("&backend=wasm" if backend == "wasm" else "")
        _open(session, server.url + query, "tiny-float", backend)

        _answers_as_pytorch(session, card, reference, "tiny-float")


def _answers_as_pytorch(session, card: Path, reference: dict, variant: str) -> None:
    """The image question through the file picker, then the text question: prompts and greedy answers
    are PyTorch's, and the page shows no error."""
    session.page.set_input_files("#image", str(card))
    session.page.locator("#preview").wait_for(state="visible", timeout=10_000)
    prompt, answer = _ask(session, IMAGE_PROMPT)
    expected_prompt, expected_answer = _expected(reference, "image", variant)
    assert prompt == expected_prompt  # the template, the soft tokens' place, the tokenizer
    assert answer == expected_answer, f"page {answer}\nPyTorch {expected_answer}"

    session.page.click("#clear-image")
    prompt, answer = _ask(session, TEXT_PROMPT)
    assert (prompt, answer) == _expected(reference, "text", variant)
    assert not session.page.is_visible("#errors"), session.diagnostics()
    assert not session.page_errors


@pytest.mark.parametrize("backend", ["webgpu", "wasm"])
def test_onnxruntime_web_variant_answers_exactly_as_pytorch(tiny_web_bundle, session_factory, card, reference, backend):
    """The onnx target's float graphs (vision.onnx, embedding.onnx, the decoder with its KV cache), each
    with its external data, on onnxruntime-web: the page's prompt is the processor's and its greedy
    answers, with the image and without, are PyTorch's, on WebGPU (KV cache kept on the GPU) and on
    the wasm CPU backend. The route MedGemma 4B reads images by (docs/web-routes.md).

    Then a long question with the image (a prefill of 65 tokens, as MedGemma's image prompts are
    long): PyTorch's answer too. On an adapter whose subgroups are narrower than onnxruntime-web's
    flash attention assumes (SwiftShader's: 4 lanes) the page gives onnxruntime-web a device without
    subgroups and says so; with them, this answer departed from its first token."""
    with serve(tiny_web_bundle) as server:
        session = session_factory(WEBGPU)
        query = "?variant=tiny-onnx" + ("&backend=wasm" if backend == "wasm" else "")
        _open(session, server.url + query, "tiny-onnx", backend, runtime="onnxruntime-web")
        _answers_as_pytorch(session, card, reference, "tiny-onnx")

        session.page.set_input_files("#image", str(card))
        session.page.locator("#preview").wait_for(state="visible", timeout=10_000)
        prompt, answer = _ask(session, LONG_PROMPT)
        expected_prompt, expected_answer = _expected(reference, "long", "tiny-onnx")
        assert prompt == expected_prompt and len(prompt) >= 32
        assert answer == expected_answer, f"page {answer}\nPyTorch {expected_answer}"
        width = session.page.evaluate("navigator.gpu.requestAdapter().then((a) => a && a.info.subgroupMinSize)")
        withheld = "narrower than onnxruntime-web's fast attention needs" in session.text("#notices")
        assert withheld == (backend == "webgpu" and width is not None and width < 8), session.diagnostics()
        assert not session.page.is_visible("#errors"), session.diagnostics()


@pytest.mark.parametrize("variant", ["tiny-int8-images", "tiny-int8-streamed"])
def test_int8_variant_within_the_parity_threshold(tiny_web_bundle, session_factory, card, reference, variant):
    """The bundle's int8 graphs on WebGPU, loaded whole (tiny-int8-images) and with their quantized
    weights streamed (tiny-int8-streamed, docs/web-streamed-weights.md): the decoder's and embedder's
    weights are separate files, downloaded and verified like every file, then streamed into WebGPU
    buffers (each compiled partition reads them from the start), every CPU-side mapping of them landing
    on the one scratch region. Either answer is within the manifest's threshold of PyTorch's."""
    import json

    threshold = _manifest()["targets"]["bundle"]["parity"]["min_image_token_agreement"]
    entry = next(v for v in json.loads((tiny_web_bundle / "bundle.json").read_text())["variants"] if v["name"] == variant)
    weights = {item["weights"]: entry["files"][item["weights"]]["size"] for item in (entry.get("streamed") or {}).values()}
    assert bool(weights) == variant.endswith("streamed")
    with serve(tiny_web_bundle) as server:
        session = session_factory(WEBGPU)
        _open(session, server.url + f"?variant={variant}", variant, "webgpu")
        if weights:
            streamed = json.loads(session.page.get_attribute("body", "data-streamed"))
            print(f"\nstreamed: {streamed}, weights files {weights}")
            assert streamed["readers"] >= len(weights), session.diagnostics()
            assert streamed["bytes"] >= sum(weights.values()) and streamed["mappings"] > 0, streamed
        _drop(session, card)
        session.page.locator("#preview").wait_for(state="visible", timeout=10_000)
        prompt, answer = _ask(session, IMAGE_PROMPT)
        expected_prompt, expected_answer = _expected(reference, "image", variant)
        assert prompt == expected_prompt
        leading = next((i for i, (a, b) in enumerate(zip(answer, expected_answer)) if a != b), min(len(answer), len(expected_answer)))
        agreement = leading / len(expected_answer)
        print(f"\n{variant} on WebGPU: {leading} of PyTorch's {len(expected_answer)} image-answer tokens from the first ({agreement:.2f})")
        assert agreement >= threshold, f"page {answer}\nPyTorch {expected_answer}"
        assert not session.page_errors


def test_a_streamed_variant_without_webgpu_is_passed_over_with_the_reason(tiny_web_bundle, session_factory):
    """Streamed weights go to the GPU only: on the CPU backend the page does not download them, says
    why, and falls back to the next variant."""
    with serve(tiny_web_bundle) as server:
        session = session_factory(WEBGPU)
        session.open(server.url + "?variant=tiny-int8-streamed&backend=wasm", timeout_ms=300_000)
        notices = session.text("#notices") + session.text("#errors")
        assert "int8 text, weights streamed to the GPU" in notices and "so it needs WebGPU, which was turned off for this page" in notices, \
            session.diagnostics()
        assert session.page.get_attribute("body", "data-variant") != "tiny-int8-streamed"


# Watches the answer as the user sees it: records each text it shows and presses Stop (a click on the
# button) when told: `stopAtStart`, as soon as the page starts answering; `stopAfter`: N, as soon as the
# answer has shown N texts, noting how many tokens the page had written then. An init script runs
# through the DevTools protocol, outside the page's CSP.
WATCH_ANSWER = """
window.modelforgeWatch = {texts: [], stopAtStart: false, stopAfter: 0, tokensAtStop: null};
new MutationObserver(() => {
  const watch = window.modelforgeWatch, answer = document.getElementById('answer');
  if (watch.stopAtStart && document.body.dataset.state === 'generating') {
    watch.stopAtStart = false;
    document.getElementById('stop').click();
  }
  if (!answer || !answer.textContent || watch.texts.at(-1) === answer.textContent) return;
  watch.texts.push(answer.textContent);
  if (watch.texts.length === watch.stopAfter) {
    watch.tokensAtStop = (answer.dataset.tokens || '').split(',').filter(Boolean).length;
    document.getElementById('stop').click();
  }
}).observe(document, {subtree: true, childList: true, characterData: true, attributeFilter: ['data-state']});
"""


def _paste(session, path: Path) -> None:
    """Paste an image file into the question box, as a user pastes a copied image (a real ClipboardEvent)."""
    session.page.evaluate(
        "([bytes, name]) => { const data = new DataTransfer();"
        " data.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'}));"
        " document.getElementById('prompt').dispatchEvent("
        "   new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true})); }",
        [list(path.read_bytes()), path.name],
    )


@pytest.mark.parametrize("backend", ["webgpu", "wasm"])
def test_litertjs_streams_stops_and_takes_a_pasted_image(tiny_web_bundle, session_factory, card, reference, backend):
    """One page of the float LiteRT.js variant: Stop pressed as the answer starts ends it before any token
    (without an error: the page used to fail decoding the empty answer); Stop pressed while the answer
    streams ends it within a token, says so and keeps the partial answer (the start of the full one);
    the same question asked again gets the full answer, streamed, equal to a fresh page's (PyTorch's, as
    the test above shows); an image pasted into the question box is shown and answered exactly as
    through the file picker."""
    expected_prompt, expected_answer = _expected(reference, "text", "tiny-float")
    with serve(tiny_web_bundle) as server:
        session = session_factory(WEBGPU)
        session.page.add_init_script(WATCH_ANSWER)
        query = "?variant=tiny-float" + ("&backend=wasm" if backend == "wasm" else "")
        _open(session, server.url + query, "tiny-float", backend)
        watch = lambda: session.page.evaluate("window.modelforgeWatch")  # noqa: E731

        session.page.evaluate("window.modelforgeWatch.stopAtStart = true")
        session.page.fill("#prompt", TEXT_PROMPT)
        session.page.click("#send")
        session.page.locator(ANSWERED).wait_for(timeout=300_000)
        assert session.state() == "ready", session.diagnostics()
        label = session.page.inner_text("#answer-state")
        assert "stopped" in label and "before any text" in label, session.diagnostics()
        assert session.page.get_attribute("#answer", "data-tokens") == "" and not session.page.text_content("#answer")

        session.page.evaluate("window.modelforgeWatch.stopAfter = 3")
        prompt, partial = _ask(session, TEXT_PROMPT)
        stopped = watch()
        assert stopped["tokensAtStop"] is not None, f"the answer never showed 3 texts before it ended: {stopped['texts']}"
        assert "stopped" in session.page.inner_text("#answer-state"), session.diagnostics()
        assert session.page.get_attribute("#answer", "data-ended") == "stopped"
        assert len(partial) - stopped["tokensAtStop"] <= 1  # the token in flight when Stop was pressed, no more
        assert prompt == expected_prompt and partial == expected_answer[: len(partial)] and len(partial) < len(expected_answer)
        assert session.page.is_disabled("#stop") and session.page.is_enabled("#send")

        session.page.evaluate("window.modelforgeWatch = {...window.modelforgeWatch, texts: [], stopAfter: 0}")
        assert _ask(session, TEXT_PROMPT) == (expected_prompt, expected_answer)  # nothing left over from the stopped answer
        shown = watch()["texts"]
        assert len(shown) >= 3, f"the answer did not stream: it showed {shown}"  # at least two texts before the last
        assert shown[-1] == session.page.text_content("#answer")

        _paste(session, card)
        session.page.locator("#preview").wait_for(state="visible", timeout=10_000)
        assert session.page.is_visible("#clear-image")
        assert _ask(session, IMAGE_PROMPT) == _expected(reference, "image", "tiny-float")  # the file picker's answer (test above)
        assert not session.page.is_visible("#errors"), session.diagnostics()
        assert not session.page_errors
