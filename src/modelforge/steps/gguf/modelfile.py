"""The Ollama Modelfile the gguf_package step writes beside the GGUF files. FROM the text GGUF and, for a
model that reads images, a second FROM of the mmproj GGUF: Ollama's parser (parser/parser.go) merges
every FROM into the create request's files, and its server files a GGUF whose general.type is `mmproj`
(from v0.30.4; before that, any GGUF with clip.vision.block_count and no block_count) as the
`application/vnd.ollama.image.projector` layer it hands llama.cpp's mtmd, so no single-file surgery
(ollama#10519) is needed. TEMPLATE is Gemma 3's chat format in Go-template form (Ollama's own
gemma3-instruct template), written only after the source's Jinja chat template is rendered and found
to give the same prompts; PARAMETER carries the stop tokens and the manifest's sampler. A helper of
the package step, not a step: imports only errors and the stdlib at module level (jinja2 inside)."""

from __future__ import annotations

from modelforge.errors import StepFailed

# Gemma 3's turns as a Go template over Ollama's .Messages (the system message, if any, at index 0,
# shown as $.System at the start of the first user turn, as the Jinja template's first_user_prefix does).
GEMMA3_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{- if and (eq $i 1) $.System }}
{{ $.System }}
{{ end }}
{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- if $last }}<start_of_turn>model
{{ end }}
{{- end }}"""

# Conversations the source's chat template must render as GEMMA3_TEMPLATE does (after its BOS, which
# llama.cpp's tokenizer adds: tokenizer.ggml.add_bos_token).
SAMPLES = (
    [{"role": "user", "content": "What does the X-ray show?"}],
    [{"role": "system", "content": "You are a radiologist."}, {"role": "user", "content": "Describe the film."}],
    [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Any effusion?"}],
)


def render_gemma3(messages: list[dict]) -> str:
    """What GEMMA3_TEMPLATE renders for `messages` (text/template semantics spelled out in Python)."""
    system = next((message["content"] for message in messages if message["role"] == "system"), "")
    out = []
    for index, message in enumerate(messages):
        if message["role"] == "user":
            out.append("<start_of_turn>user")
            if index == 1 and system:
                out.append(f"\n{system}\n")
            out.append(f"\n{message['content']}<end_of_turn>\n")
        elif message["role"] == "assistant":
            out.append(f"<start_of_turn>model\n{message['content']}<end_of_turn>\n")
        if index == len(messages) - 1:
            out.append("<start_of_turn>model\n")
    return "".join(out)


def template_mismatches(chat_template: str, bos_token: str) -> list[str]:
    """Where the source's Jinja chat template (rendered as transformers does, generation prompt on)
    differs from the Go template; empty when they agree on every sample."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    template = environment.from_string(chat_template)
    found = []
    for messages in SAMPLES:
        ours = bos_token + render_gemma3(messages)
        theirs = template.render(messages=messages, bos_token=bos_token, add_generation_prompt=True)
        if ours != theirs:
            found.append(f"{[m['role'] for m in messages]}: source renders {theirs!r}, the Go template {ours!r}")
    return found


def quote(value: str) -> str:
    """A Modelfile argument as Ollama's parser reads it back: bare when it can be, else in quotes."""
    if '"""' in value:
        raise StepFailed(f'a Modelfile value cannot contain """: {value[:60]!r}')
    if "\n" in value or '"' in value:
        return f'"""{value}"""'
    if value != value.strip() or not value or " " in value or "\t" in value:
        return f'"{value}"'
    return value


SAMPLER_PARAMETERS = {"k": "top_k", "p": "top_p", "temperature": "temperature", "min_p": "min_p", "seed": "seed"}


def modelfile_text(*, model_file: str, projector_file: str | None, stop: list[str], sampler: dict | None,
                   num_ctx: int | None = None, template: str = GEMMA3_TEMPLATE) -> str:
    lines = ["# Written by modelforge: `ollama create NAME -f Modelfile` in this directory.", f"FROM ./{model_file}"]
    if projector_file:
        lines.append(f"FROM ./{projector_file}")
    lines.append(f"TEMPLATE {quote(template)}")
    for token in stop:
        lines.append(f"PARAMETER stop {quote(token)}")
    for key, name in SAMPLER_PARAMETERS.items():
        if sampler and key in sampler:
            lines.append(f"PARAMETER {name} {sampler[key]}")
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def chat_template_of(files: dict[str, str]) -> str:
    """The source's chat template: chat_template.jinja, else tokenizer_config.json's chat_template."""
    import json

    if "chat_template.jinja" in files:
        return files["chat_template.jinja"]
    template = json.loads(files.get("tokenizer_config.json", "{}")).get("chat_template")
    if not isinstance(template, str):
        raise StepFailed("the checkpoint has no chat template (chat_template.jinja or tokenizer_config.json's chat_template); the Modelfile's TEMPLATE cannot be checked")
    return template
