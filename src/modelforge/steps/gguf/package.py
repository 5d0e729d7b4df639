"""Step `gguf_package`: the gguf target's directory, laid out as Ollama and LM Studio take it:
`<file>-<TYPE>.gguf` (the text model), `mmproj-<file>-<TYPE>.gguf` beside it for a model that reads
images (LM Studio pairs a model with the `mmproj-*.gguf` in its folder; llama.cpp takes it as
`--mmproj`), and the Ollama `Modelfile` (modelfile.py; its TEMPLATE checked against the source's
chat template first). The GGUF bytes pass through unchanged. Imports only steps.base, errors and the
stdlib at module level."""

from __future__ import annotations

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext

KIND = "gguf_package"
VERSION = 1
TOOLS = ("jinja2",)


def file_names(file: str, text_type: str, vision_type: str | None) -> tuple[str, str | None]:
    return f"{file}-{text_type}.gguf", (f"mmproj-{file}-{vision_type}.gguf" if vision_type else None)


def run(context: StepContext) -> None:
    """params: {file, text_type, vision_type (null: text only), stop, sampler, num_ctx, bos_token, chat_template};
    inputs `text` (model.gguf), `vision` (mmproj.gguf, when vision_type), `checkpoint` (its chat template)."""
    from modelforge.steps.gguf import modelfile

    params = context.params
    text_name, vision_name = file_names(params["file"], params["text_type"], params.get("vision_type"))
    context.pass_through("text", "model.gguf", text_name)
    if vision_name:
        context.pass_through("vision", "mmproj.gguf", vision_name)
    files = {relative: context.input_path("checkpoint", relative).read_text() for relative in context.inputs["checkpoint"]}
    template = files.get(params["chat_template"]) or modelfile.chat_template_of(files)
    mismatches = modelfile.template_mismatches(template, params["bos_token"])
    if mismatches:
        raise StepFailed(f"the source's chat template is not Gemma 3's turn format, so the Modelfile's TEMPLATE would prompt differently: {mismatches[0]}")
    text = modelfile.modelfile_text(model_file=text_name, projector_file=vision_name, stop=list(params["stop"]),
                                    sampler=params.get("sampler"), num_ctx=params.get("num_ctx"))
    context.output("Modelfile").write_text(text)
