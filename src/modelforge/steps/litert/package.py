"""Step `litertlm_package`: the .litertlm container, byte-reproducible. litert-lm-builder stamps
every file with a random uuid and the wall-clock time; here the uuid is derived from the sections'
content and the timestamp is SOURCE_DATE_EPOCH as resolved by the planner (a parameter, so it
enters the key). Sections are added in a fixed order."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import uuid
from unittest import mock

from modelforge.steps.base import StepContext

KIND = "litertlm_package"
VERSION = 1
TOOLS = ("litert-lm-builder",)


@contextlib.contextmanager
def _deterministic_system_metadata(identifier: str, timestamp: str):
    from litert_lm_builder import litertlm_builder as builder_module

    def populate(entries):
        kept = [entry for entry in entries if entry.key not in ("uuid", "creation_timestamp")]
        return kept + [
            builder_module.Metadata("uuid", identifier, builder_module.DType.STRING),
            builder_module.Metadata("creation_timestamp", timestamp, builder_module.DType.STRING),
        ]

    # The builder calls this module-level function on every build(); there is no parameter for it.
    with mock.patch.object(builder_module, "populate_system_metadata", populate):
        yield


def run(context: StepContext) -> None:
    """params: {file, source_date_epoch, tokenizer: {input, file, kind}, sections: [[input, file, model_type]]}."""
    import litert_lm_builder as lb

    params = context.params
    builder = lb.LitertLmFileBuilder()
    builder.add_system_metadata(lb.Metadata(key="Authors", value="modelforge", dtype=lb.DType.STRING))
    builder.add_llm_metadata(str(context.input_path("metadata", "llm_metadata.pb")))
    tokenizer = params["tokenizer"]
    tokenizer_path = context.input_path(tokenizer["input"], tokenizer["file"])
    if tokenizer["kind"] == "sentencepiece":
        builder.add_sentencepiece_tokenizer(str(tokenizer_path))
    else:
        builder.add_hf_tokenizer(str(tokenizer_path))
    digest = hashlib.sha256()
    for record in (context.inputs["metadata"]["llm_metadata.pb"].record, context.inputs[tokenizer["input"]][tokenizer["file"]].record):
        digest.update(record.sha256.encode())
    for input_name, file_name, model_type in params["sections"]:
        builder.add_tflite_model(str(context.input_path(input_name, file_name)), getattr(lb.TfLiteModelType, model_type))
        digest.update(context.inputs[input_name][file_name].record.sha256.encode())
    identifier = str(uuid.UUID(bytes=digest.digest()[:16], version=4))
    timestamp = datetime.datetime.fromtimestamp(params["source_date_epoch"], tz=datetime.timezone.utc).isoformat()
    with _deterministic_system_metadata(identifier, timestamp), open(context.output(params["file"]), "wb") as out:
        builder.build(out)
