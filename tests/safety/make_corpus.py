"""Writes tests/safety/corpus/: broken and hostile manifests, each with the pattern its one-line
error must match (corpus/EXPECTED.json). Run it again after changing a case; commit its output.

    python tests/safety/make_corpus.py

Every case must fail with a clear `error:` line (never a traceback, never an internal error) in
both `modelforge plan` and `modelforge build`, and write nothing outside tmp: see
test_hostile_manifests.py. Cases are written relative to a project whose manifests/ holds them
and whose fixtures/ holds the tiny checkpoint."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

GOOD = """\
name: corpus
source:
  kind: local
  path: ../fixtures/tiny-medgemma
components:
  text_decoder: {match: ["language_model.*"]}
  vision_encoder: {match: ["vision_tower.*"]}
  projector: {match: ["multi_modal_projector.*"]}
weights:
  - {kind: drop, components: [vision_encoder, projector]}
  - {kind: rename_prefix, prefix: language_model., to: ""}
config:
  - {kind: set, values: {architectures: [Gemma3ForCausalLM]}}
files:
  carry: [tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json, chat_template.jinja, added_tokens.json]
  drop: [preprocessor_config.json, processor_config.json]
targets:
  text: {kind: hf_text_only, components: [text_decoder], max_shard_size: 400KB}
"""

LITERTLM = """\
name: corpus-litertlm
source: {kind: local, path: ../fixtures/tiny-medgemma}
components:
  text_decoder: {match: ["language_model.*"]}
  vision_encoder: {match: ["vision_tower.*"]}
  projector: {match: ["multi_modal_projector.*"]}
files:
  carry: [tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json, generation_config.json, chat_template.jinja, preprocessor_config.json, processor_config.json]
targets:
  bundle:
    kind: litertlm
    task: image_text_to_text
    file: tiny.litertlm
    components: [text_decoder, vision_encoder, projector]
    prefill_lengths: [32]
    cache_length: 256
    quantization:
      text_decoder: {recipe: dynamic_wi8_afp32}
"""

HUB = GOOD.replace("source:\n  kind: local\n  path: ../fixtures/tiny-medgemma\n", "source:\n  kind: hub\n  repo: example/tiny-medgemma\n  revision: " + "ab" * 20 + "\n")

UNKNOWN_KEY = r"unknown key '{}'; (remove it|did you mean)"
TYPE = r"[Ii]nput should be|not a number|is not a|got "


def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def source_path(path: str) -> str:
    return replace(GOOD, "path: ../fixtures/tiny-medgemma", f"path: {path}")


def rule(line: str) -> str:
    return replace(GOOD, '  - {kind: rename_prefix, prefix: language_model., to: ""}', "  - " + line)


def litertlm(old: str, new: str) -> str:
    return replace(LITERTLM, old, new)


def cases() -> dict[str, tuple[bytes | str | Path, str]]:
    """file name → (content: text, bytes, or a Path meaning "a symlink to it"; error pattern)."""
    rng = random.Random(20261123)
    found: dict[str, tuple[bytes | str | Path, str]] = {}

    def add(name: str, content, pattern: str) -> None:
        assert name not in found, name
        found[name] = (content, pattern)

    # ------------------------------------------------------------------ YAML that does not parse
    yaml_error = r"fix the YAML syntax|expected|found|could not|mapping values|while scanning|while parsing"
    add("yaml-unclosed-flow-sequence.yaml", "name: corpus\nsource: [unclosed\n", yaml_error)
    add("yaml-unclosed-flow-mapping.yaml", "name: corpus\nsource: {kind: local\n", yaml_error)
    add("yaml-bad-indentation.yaml", "name: corpus\nsource:\n  kind: local\n path: x\n", yaml_error)
    add("yaml-tab-indentation.yaml", "name: corpus\nsource:\n\tkind: local\n", yaml_error)
    add("yaml-tabs-everywhere.yaml", GOOD.replace("  ", "\t"), yaml_error)
    add("yaml-unterminated-string.yaml", 'name: "corpus\nsource: x\n', yaml_error)
    add("yaml-nested-colons.yaml", "name: a: b: c\n", yaml_error)
    add("yaml-mapping-then-sequence.yaml", "name: corpus\n- item\n", yaml_error)
    add("yaml-two-documents.yaml", GOOD + "---\n" + GOOD, r"but found another document")
    add("yaml-bad-escape.yaml", 'name: "\\q"\n', yaml_error)
    add("yaml-reserved-indicator.yaml", "name: @corpus\n", yaml_error)
    add("yaml-unknown-directive-version.yaml", "%YAML 2.0\n---\nname: corpus\n", r"incompatible|YAML|version")
    add("yaml-stray-document-end.yaml", "name: corpus\n...\nsource: x\n", yaml_error)
    add("yaml-unbalanced-quotes.yaml", "name: 'corpus\n", yaml_error)
    add("yaml-control-character.yaml", "name: corp\x07us\n", r"unacceptable character #x0007: special characters are not allowed")
    add("yaml-nul-bytes.yaml", b"name: corpus\n\x00\x00\x00source: x\n", r"unacceptable character #x0000: special characters are not allowed")

    # ------------------------------------------------------------------ bombs, anchors, tags
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for level in range(1, 10):
        previous = chr(ord("a") + level - 1)
        lol += f"{chr(ord('a') + level)}: &{chr(ord('a') + level)} [{', '.join(['*' + previous] * 9)}]\n"
    add("bomb-billion-laughs.yaml", lol, r"aliases \(\*name\) are not allowed")
    add("bomb-alias-in-value.yaml", "name: &n corpus\ndescription: *n\n", r"aliases \(\*name\) are not allowed")
    add("bomb-undefined-alias.yaml", "name: corpus\ndescription: *nowhere\n", r"aliases|found undefined alias|not allowed")
    add("bomb-recursive-alias.yaml", "name: corpus\ndescription: &a [*a]\n", r"aliases \(\*name\) are not allowed")
    add("bomb-merge-key.yaml", "base: &base {kind: local}\nname: corpus\nsource:\n  <<: *base\n  path: x\n", r"aliases \(\*name\) are not allowed")
    add("bomb-merge-key-inline.yaml", "name: corpus\nsource:\n  <<: {kind: local, path: ../fixtures/tiny-medgemma}\n", r"merge|constructor")
    add("tag-python-object-apply.yaml", 'name: !!python/object/apply:os.system ["touch /tmp/modelforge-pwned"]\n', r"could not determine a constructor|python/object")
    add("tag-python-name.yaml", "name: !!python/name:os.system\n", r"could not determine a constructor|python/name")
    add("tag-python-module.yaml", "name: !!python/module:os\n", r"could not determine a constructor|python/module")
    add("tag-custom.yaml", "name: !Ref corpus\n", r"could not determine a constructor")
    add("tag-binary-garbage.yaml", "name: !!binary '%%%%'\n", r"failed to decode base64|base64|binary")
    add("tag-bad-timestamp.yaml", replace(GOOD, "name: corpus\n", "name: corpus\ndescription: !!timestamp 2024-13-45\n"), r"cannot be read|month")
    add("tag-set.yaml", replace(GOOD, "name: corpus\n", "name: !!set {a, b}\n"), TYPE)
    add("key-sequence.yaml", "name: corpus\n? [a, b]\n: value\n", r"mapping keys must be plain strings")
    add("key-mapping.yaml", "name: corpus\n? {a: b}\n: value\n", r"mapping keys must be plain strings")
    add("key-null.yaml", "name: corpus\n~: value\n", r"mapping keys must be plain strings")
    add("key-integer.yaml", replace(GOOD, "name: corpus\n", "name: corpus\n1: one\n"), r"Keys should be strings")

    # ------------------------------------------------------------------ depth and size
    add("deep-flow-sequence.yaml", "name: corpus\ndescription: " + "[" * 5000 + "]" * 5000 + "\n", r"nests too deeply")
    add("deep-flow-mapping.yaml", "name: corpus\ndescription: " + "{a: " * 3000 + "b" + "}" * 3000 + "\n", r"nests too deeply")
    deep = "".join("  " * level + f"k{level}:\n" for level in range(400)) + "  " * 400 + "v: 1\n"
    add("deep-block-mapping.yaml", "name: corpus\n" + deep, r"nests too deeply|unknown key 'k0'")
    add("deep-config-values.yaml", replace(GOOD, "{kind: set, values: {architectures: [Gemma3ForCausalLM]}}", "{kind: set, values: {x: " + "[" * 2000 + "]" * 2000 + "}}"), r"nests too deeply")
    add("huge-just-over-limit.yaml", "# " + "x" * ((1 << 20) - 1) + "\n", r"too large for a manifest")
    add("huge-many-keys.yaml", GOOD + "".join(f"key{i}: {i}\n" for i in range(20000)), r"unknown key 'key\d+'.*and \d+ more")
    add("huge-long-name.yaml", replace(GOOD, "name: corpus", "name: " + "a" * 100000), r"name: String should match pattern")
    add("huge-int-digits.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: " + "9" * 5000), r"cannot be read|digits")
    add("huge-size-string.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: '" + "9" * 5000 + "GB'"), r"is not a number of bytes")

    # ------------------------------------------------------------------ bytes that are not YAML text
    add("binary-random.yaml", bytes(rng.randrange(256) for _ in range(4096)), r"not UTF-8")
    add("binary-png.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(rng.randrange(256) for _ in range(200)), r"not UTF-8")
    add("binary-gzip.yaml", gzip.compress(GOOD.encode(), mtime=0), r"not UTF-8")
    add("binary-elf.yaml", b"\x7fELF\x02\x01\x01" + bytes(200), r"special characters are not allowed")
    add("encoding-utf16.yaml", GOOD.encode("utf-16"), r"not UTF-8")
    add("encoding-latin1.yaml", replace(GOOD, "name: corpus\n", "name: corpus\ndescription: caf\u00e9 na\u00efve\n").encode("latin-1"), r"not UTF-8")
    add("encoding-lone-surrogate.yaml", replace(GOOD, "name: corpus\n", 'name: corpus\ndescription: "\\ud800"\n'), r"unpaired surrogate")
    add("encoding-bom-then-garbage.yaml", b"\xef\xbb\xbf\xff\xfe", r"not UTF-8")

    # ------------------------------------------------------------------ empty and not a mapping
    add("empty.yaml", "", r"the manifest is empty")
    add("only-comments.yaml", "# nothing here\n# at all\n", r"the manifest is empty")
    add("only-document-marker.yaml", "---\n", r"a manifest is a mapping|empty")
    add("null-document.yaml", "~\n", r"a manifest is a mapping|empty")
    add("root-sequence.yaml", "- name: corpus\n", r"a manifest is a mapping .* got list")
    add("root-scalar.yaml", "corpus\n", r"a manifest is a mapping .* got str")
    add("root-number.yaml", "42\n", r"a manifest is a mapping .* got int")

    # ------------------------------------------------------------------ wrong types
    add("type-name-int.yaml", replace(GOOD, "name: corpus", "name: 123"), TYPE)
    add("type-name-null.yaml", replace(GOOD, "name: corpus", "name: null"), TYPE)
    add("type-name-list.yaml", replace(GOOD, "name: corpus", "name: [corpus]"), TYPE)
    add("type-source-string.yaml", replace(GOOD, "source:\n  kind: local\n  path: ../fixtures/tiny-medgemma\n", "source: ../fixtures/tiny-medgemma\n"), r"source|kind")
    add("type-source-list.yaml", replace(GOOD, "source:\n  kind: local\n  path: ../fixtures/tiny-medgemma\n", "source: [local]\n"), r"source|kind")
    add("type-source-kind-missing.yaml", replace(GOOD, "  kind: local\n", ""), r"`kind` is missing")
    add("type-source-kind-int.yaml", replace(GOOD, "  kind: local\n", "  kind: 5\n"), r"kind|tag")
    add("type-source-kind-unknown.yaml", replace(GOOD, "  kind: local\n", "  kind: s3\n"), r"set `kind` to one of")
    add("type-targets-list.yaml", replace(GOOD, "targets:\n  text:", "targets:\n  - text:"), TYPE + r"|dictionary")
    add("type-target-list.yaml", replace(GOOD, "  text: {kind: hf_text_only, components: [text_decoder], max_shard_size: 400KB}", "  text: [hf_text_only]"), r"text|kind|dict")
    add("type-components-list.yaml", replace(GOOD, 'components:\n  text_decoder: {match: ["language_model.*"]}', 'components:\n  - text_decoder: {match: ["language_model.*"]}'), TYPE + r"|dictionary|fix the YAML syntax")
    add("type-weights-mapping.yaml", replace(GOOD, "weights:\n  - {kind: drop,", "weights:\n  x: {kind: drop,").replace('\n  - {kind: rename_prefix, prefix: language_model., to: ""}', ""), TYPE + r"|tuple")
    add("type-config-string.yaml", replace(GOOD, "config:\n  - {kind: set, values: {architectures: [Gemma3ForCausalLM]}}", "config: hoist"), TYPE + r"|tuple")
    add("type-files-string.yaml", replace(GOOD, "files:\n  carry:", "files: tokenizer.model\nunused:\n  carry:"), TYPE + r"|unknown key")
    add("type-carry-mapping.yaml", replace(GOOD, "  carry: [", "  carry: {a: ").replace("added_tokens.json]", "added_tokens.json}"), TYPE + r"|tuple|mapping values|YAML")
    add("type-shard-size-bool.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: true"), r"true is not a number")
    add("type-shard-size-list.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: [400KB]"), TYPE)
    add("type-shard-size-words.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: lots"), r"size 'lots' is not a number")
    add("type-schema-version.yaml", replace(GOOD, "name: corpus\n", "schema_version: 2\nname: corpus\n"), r"schema_version|Input should be 1")
    add("type-schema-version-bool.yaml", replace(GOOD, "name: corpus\n", "schema_version: true\nname: corpus\n"), r"true is not a number")
    add("type-description-mapping.yaml", replace(GOOD, "name: corpus\n", "name: corpus\ndescription: {a: b}\n"), TYPE)
    add("type-match-empty.yaml", replace(GOOD, '{match: ["language_model.*"]}', "{match: []}"), r"at least 1 item|too_short|should have at least")
    add("type-match-empty-string.yaml", replace(GOOD, '{match: ["language_model.*"]}', '{match: [""]}'), r"an empty pattern matches nothing")

    # ------------------------------------------------------------------ huge or impossible numbers
    add("number-shard-size-huge.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: 1000000000000000000000000000000"), r"less than or equal")
    add("number-shard-size-negative.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: -1"), r"greater than 0")
    add("number-shard-size-zero.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: 0"), r"greater than 0")
    add("number-shard-size-inf.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: .inf"), r"finite|integer")
    add("number-shard-size-nan.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: .nan"), r"finite|integer")
    add("number-shard-size-float-overflow.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: 1e999"), r"size '1e999' is not a number of bytes")
    add("number-shard-size-fraction.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: 0.5"), r"integer|fractional")
    add("number-shard-size-units-huge.yaml", replace(GOOD, "max_shard_size: 400KB", "max_shard_size: 99999999999999999999GiB"), r"less than or equal")
    add("number-cache-length-huge.yaml", litertlm("cache_length: 256", "cache_length: 100000000000000000000"), r"less than or equal")
    add("number-prefill-zero.yaml", litertlm("prefill_lengths: [32]", "prefill_lengths: [0]"), r"greater than or equal to 1")
    add("number-prefill-over-cache.yaml", litertlm("prefill_lengths: [32]", "prefill_lengths: [512]"), r"larger than cache_length")
    add("number-sampler-negative-k.yaml", litertlm("    quantization:", "    metadata: {sampler: {k: -5}}\n    quantization:"), r"greater than or equal to 1")
    add("number-sampler-nan-p.yaml", litertlm("    quantization:", "    metadata: {sampler: {p: .nan}}\n    quantization:"), r"p: Input should be less than or equal to 1 \(got 'nan'\)")
    add("number-temperature-inf.yaml", litertlm("    quantization:", "    metadata: {sampler: {temperature: .inf}}\n    quantization:"), r"less than or equal|finite")
    add("number-parity-steps-huge.yaml", litertlm("    quantization:", "    parity: {steps: 1000000000}\n    quantization:"), r"less than or equal")
    add("number-max-tokens-negative.yaml", litertlm("    quantization:", "    metadata: {max_tokens: -1}\n    quantization:"), r"greater than or equal to 1")

    # ------------------------------------------------------------------ unknown keys
    add("unknown-top-level.yaml", replace(GOOD, "name: corpus\n", "name: corpus\ncolour: blue\n"), UNKNOWN_KEY.format("colour"))
    add("unknown-targets-typo.yaml", replace(GOOD, "targets:", "targetz:"), r"unknown key 'targetz'|required key 'targets'")
    add("unknown-source-key.yaml", replace(GOOD, "  path: ../fixtures/tiny-medgemma\n", "  path: ../fixtures/tiny-medgemma\n  paht: x\n"), r"unknown key 'paht'; did you mean 'path'\?")
    add("unknown-target-key.yaml", replace(GOOD, "max_shard_size: 400KB}", "max_shard_size: 400KB, shards: 2}"), UNKNOWN_KEY.format("shards"))
    add("unknown-component-key.yaml", replace(GOOD, '{match: ["language_model.*"]}', '{matches: ["language_model.*"]}'), r"unknown key 'matches'|required key 'match'")
    add("unknown-rule-key.yaml", rule('{kind: rename_prefix, prefix: language_model., to: "", also: x}'), UNKNOWN_KEY.format("also"))
    add("unknown-files-key.yaml", replace(GOOD, "  drop: [", "  keep: [x]\n  drop: ["), UNKNOWN_KEY.format("keep"))
    add("unknown-proto-key.yaml", replace(GOOD, "name: corpus\n", "name: corpus\n__proto__: {polluted: true}\n"), UNKNOWN_KEY.format("__proto__"))
    add("unknown-class-key.yaml", replace(GOOD, "name: corpus\n", "name: corpus\n__class__: x\n"), UNKNOWN_KEY.format("__class__"))

    # ------------------------------------------------------------------ duplicate keys
    add("duplicate-top-level.yaml", replace(GOOD, "name: corpus\n", "name: corpus\nname: other\n"), r"key 'name' appears twice")
    add("duplicate-source-path.yaml", replace(GOOD, "  path: ../fixtures/tiny-medgemma\n", "  path: ../fixtures/tiny-medgemma\n  path: /etc\n"), r"key 'path' appears twice")
    add("duplicate-target.yaml", GOOD + "  text: {kind: hf_text_only, components: [text_decoder]}\n", r"key 'text' appears twice")
    add("duplicate-flow-keys.yaml", replace(GOOD, "{match: [\"language_model.*\"]}", "{match: [\"language_model.*\"], match: [\"x\"]}"), r"key 'match' appears twice")

    # ------------------------------------------------------------------ regular expressions
    catastrophic = r"exponential time|polynomial time|not a valid regular expression|too long"
    for index, pattern in enumerate([
        "(a+)+b", "(a|a)*b", "(.|.)*x", "((.*))*x", "(.{1,10}){1,10}x", r"(\w+\s?)+$", ".*.*.*.*.*x",
        "(?:a*)*b", "(x+x+)+y", "(a|aa)+$",
    ]):
        add(f"regex-catastrophic-{index}.yaml", rule(json.dumps({"kind": "rename_regex", "pattern": pattern, "to": "x"})), catastrophic)
    add("regex-invalid.yaml", rule('{kind: rename_regex, pattern: "(unclosed", to: x}'), r"not a valid regular expression")
    add("regex-repeat-overflow.yaml", rule('{kind: rename_regex, pattern: "a{99999999999999999999}", to: x}'), r"not a valid regular expression")
    add("regex-deep-groups.yaml", rule(json.dumps({"kind": "rename_regex", "pattern": "(" * 1500 + ")" * 1500, "to": "x"})), r"not a valid regular expression|too long|nests too deeply")
    add("regex-too-long.yaml", rule(json.dumps({"kind": "rename_regex", "pattern": "a" * 5000, "to": "x"})), r"too long")
    add("regex-quantizer-override.yaml", litertlm("text_decoder: {recipe: dynamic_wi8_afp32}", 'text_decoder: {recipe: dynamic_wi8_afp32, overrides: [{regex: "(.*a)*b", recipe: dynamic_wi8_afp32}]}'), catastrophic)
    add("regex-bad-replacement.yaml", rule(r'{kind: rename_regex, pattern: "language_model\\.(.*)", to: "\\9"}'), r"invalid group reference|replacement|\\9|group")

    # ------------------------------------------------------------------ paths that climb out
    outside = r"climbs out|is absolute|does not name a file"
    add("path-file-dotdot.yaml", litertlm("file: tiny.litertlm", "file: ../../../escaped.litertlm"), outside)
    add("path-file-absolute.yaml", litertlm("file: tiny.litertlm", "file: /tmp/modelforge-escaped.litertlm"), outside)
    add("path-file-inner-dotdot.yaml", litertlm("file: tiny.litertlm", "file: models/../../../escaped.litertlm"), outside)
    add("path-file-windows-drive.yaml", litertlm("file: tiny.litertlm", "file: 'C:\\escaped.litertlm'"), outside)
    add("path-file-backslash-dotdot.yaml", litertlm("file: tiny.litertlm", "file: '..\\..\\escaped.litertlm'"), outside)
    add("path-file-empty.yaml", litertlm("file: tiny.litertlm", "file: ''"), outside)
    add("path-file-dot.yaml", litertlm("file: tiny.litertlm", "file: ."), outside)
    add("path-file-trailing-slash.yaml", litertlm("file: tiny.litertlm", "file: models/"), outside)
    add("path-file-home.yaml", litertlm("file: tiny.litertlm", "file: /root/.bashrc"), outside)
    add("path-chat-template-dotdot.yaml", litertlm("    quantization:", "    metadata: {chat_template: ../../../../etc/passwd}\n    quantization:"), outside)
    add("path-chat-template-absolute.yaml", litertlm("    quantization:", "    metadata: {chat_template: /etc/shadow}\n    quantization:"), outside)
    add("path-name-dotdot.yaml", replace(GOOD, "name: corpus", "name: ../../etc"), r"name: String should match pattern")
    add("path-name-slash.yaml", replace(GOOD, "name: corpus", "name: a/b"), r"name: String should match pattern")
    add("path-target-name-dotdot.yaml", replace(GOOD, "  text: {kind", "  ..: {kind"), r"name '\.\.' must be lower-case")
    add("path-target-name-slash.yaml", replace(GOOD, "  text: {kind", "  'a/../../b': {kind"), r"must be lower-case")

    # ------------------------------------------------------------------ sources that are system files
    system = r"is the system directory|not a checkpoint"
    for label, path in [("etc", "/etc"), ("proc", "/proc"), ("proc-self-root", "/proc/self/root"), ("dev", "/dev"),
                        ("dev-zero", "/dev/zero"), ("sys", "/sys/kernel"), ("root", "/"), ("run", "/run"),
                        ("dotdot-etc", "../../../../../../../../../../etc"), ("boot", "/boot")]:
        add(f"source-system-{label}.yaml", source_path(path), system)
    add("source-path-empty.yaml", source_path("''"), r"at least 1 character")
    add("source-path-missing.yaml", source_path("../fixtures/nowhere"), r"does not exist; fix source.path")
    add("source-files-absolute.yaml", replace(GOOD, "  path: ../fixtures/tiny-medgemma\n", "  path: ../fixtures/tiny-medgemma\n  files: [/etc/passwd]\n"), r"has no files matching /etc/passwd")
    add("source-files-dotdot.yaml", replace(GOOD, "  path: ../fixtures/tiny-medgemma\n", "  path: ../fixtures/tiny-medgemma\n  files: ['../../../../etc/*']\n"), r"has no files matching|which are pickles")
    add("source-carry-system-file.yaml", replace(GOOD, "  carry: [", "  carry: [/etc/passwd, "), r"files pattern '/etc/passwd' matches no source file")
    add("source-hub-revision-traversal.yaml", replace(HUB, "  revision: " + "ab" * 20 + "\n", "  revision: ../../../../etc/passwd\n  allow_branch: true\n"), r"not a valid branch, tag or commit name")
    add("source-hub-unpinned.yaml", replace(HUB, "ab" * 20, "main"), r"pin `revision` to a 40-hex commit")
    add("source-hub-bad-repo.yaml", replace(HUB, "example/tiny-medgemma", "../../etc/passwd"), r"repo: String should match pattern")
    add("source-hub-url-repo.yaml", replace(HUB, "example/tiny-medgemma", "https://evil.example/x"), r"repo: String should match pattern")
    add("source-hub-revision-number.yaml", replace(HUB, "revision: " + "ab" * 20, "revision: 1234567890"), r"read as a number; quote it")

    # ------------------------------------------------------------------ code execution requests
    add("trust-remote-code-local.yaml", replace(GOOD, "  path: ../fixtures/tiny-medgemma\n", "  path: ../fixtures/tiny-medgemma\n  trust_remote_code: true\n"), r"trust_remote_code: true would run Python code")
    add("trust-remote-code-hub.yaml", replace(HUB, "  revision:", "  trust_remote_code: true\n  revision:"), r"trust_remote_code: true would run Python code")
    add("trust-remote-code-string.yaml", replace(GOOD, "  path: ../fixtures/tiny-medgemma\n", "  path: ../fixtures/tiny-medgemma\n  trust_remote_code: 'yes'\n"), r"trust_remote_code: true would run Python code")
    add("trust-remote-code-top-level.yaml", replace(GOOD, "name: corpus\n", "name: corpus\ntrust_remote_code: true\n"), UNKNOWN_KEY.format("trust_remote_code"))
    add("trust-remote-code-in-target.yaml", replace(GOOD, "max_shard_size: 400KB}", "max_shard_size: 400KB, trust_remote_code: true}"), UNKNOWN_KEY.format("trust_remote_code"))
    pickle = r"can take \.\w+ files, which are pickles"
    for label, pattern in [("star", "'*'"), ("bin", "'*.bin'"), ("pytorch-model", "pytorch_model.bin"), ("pt", "'*.pt'"),
                           ("pth", "'*.pth'"), ("pkl", "'*.pkl'"), ("ckpt", "'*.ckpt'"), ("prefix-star", "'model*'"),
                           ("case", "'*.BIN'"), ("class", "'*.[bB][iI][nN]'"), ("question", "'*.?in'")]:
        add(f"pickle-{label}.yaml", replace(GOOD, "  path: ../fixtures/tiny-medgemma\n", f"  path: ../fixtures/tiny-medgemma\n  files: ['*.safetensors', {pattern}]\n"), pickle)
    add("pickle-hub.yaml", replace(HUB, "  revision:", "  files: ['*.safetensors', '*.json', '*.bin']\n  revision:"), pickle)

    # ------------------------------------------------------------------ valid YAML, impossible build
    add("semantic-undeclared-component.yaml", replace(GOOD, "components: [text_decoder], max", "components: [decoder], max"), r"component 'decoder', which is not declared")
    add("semantic-drop-nothing.yaml", replace(GOOD, "  - {kind: drop, components: [vision_encoder, projector]}", "  - {kind: drop}"), r"a drop rule needs")
    add("semantic-tensor-not-covered.yaml", replace(GOOD, "[vision_encoder, projector]}", "[vision_encoder]}"), r"neither used by a target nor dropped")
    add("semantic-quantize-unknown-component.yaml", litertlm("text_decoder: {recipe: dynamic_wi8_afp32}", "text_decoder: {recipe: dynamic_wi8_afp32}\n      decoder: {recipe: dynamic_wi8_afp32}"), r"quantization names component 'decoder'")
    add("semantic-unknown-recipe.yaml", litertlm("recipe: dynamic_wi8_afp32", "recipe: dynamic_wi9_afp32"), r"unknown quantization recipe")
    add("semantic-checkpoint-missing-target.yaml", litertlm("    task: image_text_to_text", "    task: image_text_to_text\n    checkpoint: nowhere"), r"neither 'source' nor an hf_text_only target")
    add("semantic-bad-hoist-path.yaml", litertlm("    quantization:", "    hoists: [{name: x, path: 'model.__class__.__init__.__globals__', to: 'os'}]\n    quantization:"), r"names a private attribute")
    add("semantic-no-targets.yaml", replace(GOOD, GOOD[GOOD.index("targets:"):], "targets: {}\n"), r"at least 1 item")

    # ------------------------------------------------------------------ the manifest file itself
    add("file-symlink-etc-passwd.yaml", Path("/etc/passwd"), r"a manifest is a mapping|fix the YAML syntax|mapping values")
    add("file-symlink-dev-zero.yaml", Path("/dev/zero"), r"not a regular file")
    add("file-symlink-dev-urandom.yaml", Path("/dev/urandom"), r"not a regular file")
    add("file-symlink-proc-environ.yaml", Path("/proc/self/environ"), r"not UTF-8|special characters are not allowed|a manifest is a mapping|fix the YAML|empty")
    add("file-symlink-dangling.yaml", Path("/nonexistent/modelforge-manifest.yaml"), r"no such manifest")
    return found


def main() -> None:
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    CORPUS.mkdir()
    expected = {}
    for name, (content, pattern) in sorted(cases().items()):
        path = CORPUS / name
        if isinstance(content, Path):
            os.symlink(content, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_bytes(content.encode())
        expected[name] = pattern
    (CORPUS / "EXPECTED.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(expected)} manifests into {CORPUS}")


if __name__ == "__main__":
    main()
