#!/usr/bin/env python
"""Benchmark: the real manifests/medgemma-1.5-litertlm.yaml built against a synthetic MedGemma 4B
checkpoint at its real size, on this machine, with every memory figure bounded by a cgroup.

In one run (see bench/README.md):

  checkpoint  a synthetic Hub-layout MedGemma 4B checkpoint (883 real names and shapes, bf16,
              2 shards, index, the 4B multimodal config, a working 262,144-piece SentencePiece
              tokenizer with Gemma 3's special tokens at their real ids), reused when its stamp
              matches; --text-layers/--vision-layers keep the real vocabulary and widths but fewer
              layers, so the whole harness runs in minutes
  check       the checkpoint loads as a user would load it: SentencePiece ids, AutoTokenizer and
              AutoProcessor with the chat template, and (small sizes) a finite bf16/f32 forward
  plan        `modelforge plan --json`: the predicted peak of every step, and the disk (disk.py)
  build       `modelforge build MANIFEST --source-dir CKPT --store FRESH --out FRESH` in a scratch
              project, inside a memory cgroup: per step wall s, peak RSS, anonymous peak, output sizes;
              the store's size after it and the most its store and out/ held at once on the disk (allocated blocks, sampled every
              0.5 s, hard links once), against the plan's disk prediction
  rebuild     the same build again in a fresh store: every output compared byte for byte
  runtime     litert_lm loads the built .litertlm on CPU and generates (time to first token, tokens/s)
  export_hf   bare `python -m litert_torch.generative.export_hf` on the same checkpoint, the same
              options, inside its own memory cgroup: completes with peak X, or OOM-killed at N GiB

Results: JSON at --results, a marked section of --markdown (bench/RESULTS.md), a summary on stdout.
Targets are printed PASS/FAIL and never raised; exits non-zero only when the harness itself fails.
Needs root for the cgroups (cgroup v1 memory controller); without it, says so and runs unbounded
only with --no-cgroup.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

from modelforge.safetensors_io import write_tensors
from modelforge.testing.reference import load_tensor_shapes, reference_dir, shard_assignment, shard_file_names

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tools"))
from bench_litertlm import ENV, machine, versions  # noqa: E402  (the same environment and records as the litertlm bench)
from bench_text_only import drop_caches, filesystem  # noqa: E402
from results_markdown import replace_section, targets_table, text_tables  # noqa: E402  (bench/ is the script's directory)

MANIFEST = ROOT / "manifests" / "medgemma-1.5-litertlm.yaml"
MARK = "bench:medgemma_4b"
GENERATOR_VERSION = 1
DTYPE = "BF16"
FULL_TEXT_LAYERS, FULL_VISION_LAYERS = 34, 27
CHUNK = 1 << 22  # elements written per call while generating
GIB = 1 << 30

# Targets (printed PASS/FAIL, never raised).
MACHINE_TARGET_GIB = 24  # the whole build completes on a 24 GiB machine
STEP_TARGET_GIB = 20  # no step peaks above this
TEXT_EXPORT_FACTOR = 1.3  # text export peak ≤ this × the float32 bytes of the text decoder's weights
DISK_TOLERANCE = 0.15  # the plan's disk prediction (store after the build, peak held) within this of what the build did (#26)

# SentencePiece: Gemma 3's pieces at their real ids; every other id is the tiny fixture's trained
# BPE vocabulary (from id 107 on) or an unused filler piece.
SENTENCEPIECE_PIECES = 262144
SPECIAL_IDS = {
    0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 5: "[multimodal]",
    105: "<start_of_turn>", 106: "<end_of_turn>", 255999: "<start_of_image>", 256000: "<end_of_image>",
}
IMAGE_SOFT_TOKEN, IMAGE_SOFT_TOKEN_ID = "<image_soft_token>", 262144
REFERENCE_FILES = {  # name in the checkpoint → file in reference/
    "generation_config.json": "medgemma-27b-it-generation_config.json",
    "special_tokens_map.json": "medgemma-27b-it-special_tokens_map.json",
    "added_tokens.json": "medgemma-27b-it-added_tokens.json",
    "chat_template.jinja": "medgemma-27b-it-chat_template.jinja",
    "preprocessor_config.json": "medgemma-27b-it-preprocessor_config.json",
    "processor_config.json": "medgemma-27b-it-processor_config.json",
}
CONFIG_REFERENCE = "mlx-community_gemma-3-4b-it-bf16-config.json"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _numel(shape) -> int:
    return math.prod(shape) if shape else 1


# --------------------------------------------------------------------------- the checkpoint
def layer_shapes(text_layers: int, vision_layers: int) -> dict[str, tuple[int, ...]]:
    """The reference tensor list without decoder layers ≥ text_layers and vision layers ≥ vision_layers."""
    shapes, dtype = load_tensor_shapes()
    if dtype.upper() != DTYPE:
        raise SystemExit(f"reference tensor list is {dtype}, expected {DTYPE}")
    kept = {}
    for name, shape in shapes.items():
        text = re.match(r"language_model\.model\.layers\.(\d+)\.", name)
        vision = re.match(r"vision_tower\.vision_model\.encoder\.layers\.(\d+)\.", name)
        if (text and int(text.group(1)) >= text_layers) or (vision and int(vision.group(1)) >= vision_layers):
            continue
        kept[name] = shape
    return kept


def value_scale(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a tensor's values, as a trained Gemma 3 stores them at the orders of magnitude
    that matter for numerics: matrices and embeddings N(0, 0.02) (the embedding is multiplied by
    sqrt(2560) in the forward, giving unit-scale activations); Gemma's RMSNorm weights are stored as
    w with a gain of (1 + w): ~1 here (gain ~2), like the text norms and the projector's soft-token
    norm; SigLIP's LayerNorm multiplies by w directly: ~1; biases small."""
    if len(shape) == 1 and name.endswith(".bias"):
        return 0.0, 0.02
    if len(shape) == 1:
        return 1.0, 0.1
    return 0.0, 0.02


_TABLE = None


def _normal_table() -> np.ndarray:
    """65,536 quantiles of N(0, 1): a uniform random uint16 indexes it, giving normal values at
    ~130 M values/s (numpy's own normal generator does ~20 M/s, 4 min for 4.3 B values)."""
    global _TABLE
    if _TABLE is None:
        from statistics import NormalDist

        unit = NormalDist()
        _TABLE = np.array([unit.inv_cdf((k + 0.5) / 65536) for k in range(65536)], dtype=np.float32)
    return _TABLE


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns, rounded to nearest even."""
    bits = values.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _tensor_chunks(name: str, shape: tuple[int, ...]):
    """The tensor's bf16 bytes in chunks; values depend only on its name and shape (so a checkpoint
    with fewer layers holds exactly the same values for the tensors it has)."""
    mean, std = value_scale(name, shape)
    lookup = _bf16_bits(_normal_table() * std + mean)
    seed = int.from_bytes(hashlib.sha256(f"{name}:{list(shape)}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    remaining = _numel(shape)
    while remaining:
        count = min(CHUNK, remaining)
        yield lookup[np.frombuffer(rng.bytes(2 * count), dtype=np.uint16)].tobytes()
        remaining -= count


def _write_shard(path: Path, names: list[str], shapes: dict) -> int:
    """A safetensors file written tensor by tensor (never a whole shard in memory), fsynced; the
    header as safetensors' own writer lays it out (same-dtype tensors by name, 8-byte padding)."""
    write_tensors(path, [(name, DTYPE, shapes[name], partial(_tensor_chunks, name, shapes[name])) for name in names], {"format": "pt"})
    return path.stat().st_size


def model_config(text_layers: int, vision_layers: int) -> tuple[dict, list[str]]:
    """The 4B multimodal config of reference/ (the minimal form the Hub's Gemma 3 4B repositories
    ship); transformers 5.23 completes it with Gemma3TextConfig's defaults, which are the 4B's
    (vocabulary 262208, 8 heads, 4 KV heads, head_dim 256, query_pre_attn_scalar 256, rope 1e6 global
    with linear ×8 / 1e4 local, 5 sliding then 1 full layer). Returns it and what was changed."""
    config = json.loads((reference_dir() / CONFIG_REFERENCE).read_text())
    added = []
    if text_layers != FULL_TEXT_LAYERS:
        config["text_config"]["num_hidden_layers"] = text_layers
        added.append(f"text_config.num_hidden_layers = {text_layers}")
        pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(text_layers)]
        if "full_attention" not in pattern:
            pattern[-1] = "full_attention"  # so a small checkpoint still exercises both attention kinds
        config["text_config"]["layer_types"] = pattern
        added.append(f"text_config.layer_types = {pattern} (the real 5:1 pattern, truncated; last layer full)")
    if vision_layers != FULL_VISION_LAYERS:
        config["vision_config"]["num_hidden_layers"] = vision_layers
        added.append(f"vision_config.num_hidden_layers = {vision_layers}")
    return config, added


def tokenizer_files() -> dict[str, bytes]:
    """tokenizer.model (a SentencePiece ModelProto of 262,144 pieces), tokenizer.json (transformers'
    own conversion of it) and tokenizer_config.json. The pieces are the tiny fixture's trained BPE
    model (fixtures/tiny-medgemma/tokenizer.model, tools/make_tiny_medgemma.py) re-laid to Gemma 3's
    ids, padded with `<unusedN>` pieces. The filler pieces are NORMAL pieces with a very low score
    that no merge reaches, so they never change an encoding; (Gemma marks its <unusedN> user-defined;
    with 262k user-defined pieces transformers' conversion takes over 10 minutes)."""
    import tempfile

    import sentencepiece
    import tokenizers
    from sentencepiece import sentencepiece_model_pb2
    from transformers import GemmaTokenizer

    from make_tiny_medgemma import added_token_entry, tokenizer_config

    tiny = sentencepiece_model_pb2.ModelProto()
    tiny.ParseFromString((ROOT / "fixtures" / "tiny-medgemma" / "tokenizer.model").read_bytes())
    by_piece = {piece.piece: piece for piece in tiny.pieces}
    rest = iter([piece for piece in tiny.pieces if piece.piece not in SPECIAL_IDS.values()])
    model = sentencepiece_model_pb2.ModelProto()
    model.CopyFrom(tiny)
    del model.pieces[:]
    model.trainer_spec.vocab_size = SENTENCEPIECE_PIECES
    del model.trainer_spec.user_defined_symbols[:]
    model.trainer_spec.user_defined_symbols.extend([SPECIAL_IDS[i] for i in sorted(SPECIAL_IDS) if i > 3])
    unused = 0
    for index in range(SENTENCEPIECE_PIECES):
        piece = model.pieces.add()
        source = by_piece[SPECIAL_IDS[index]] if index in SPECIAL_IDS else (next(rest, None) if index >= 107 else None)
        if source is not None:
            piece.CopyFrom(source)
        else:
            piece.piece, piece.score, piece.type = f"<unused{unused}>", -1e9, sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
            unused += 1
    model_bytes = model.SerializeToString()
    processor = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
    wrong = {symbol: processor.piece_to_id(symbol) for index, symbol in SPECIAL_IDS.items() if processor.piece_to_id(symbol) != index}
    if processor.get_piece_size() != SENTENCEPIECE_PIECES or wrong:
        raise SystemExit(f"tokenizer.model: {processor.get_piece_size()} pieces, wrong ids {wrong}")
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "tokenizer.model").write_bytes(model_bytes)
        backend = GemmaTokenizer.from_pretrained(directory).backend_tokenizer  # as make_tiny_medgemma does
    for index in sorted(SPECIAL_IDS):
        if index > 3:
            backend.add_special_tokens([tokenizers.AddedToken(SPECIAL_IDS[index], normalized=False)])
    backend.add_special_tokens([tokenizers.AddedToken(IMAGE_SOFT_TOKEN, normalized=False)])
    if backend.token_to_id(IMAGE_SOFT_TOKEN) != IMAGE_SOFT_TOKEN_ID:
        raise SystemExit(f"{IMAGE_SOFT_TOKEN} got id {backend.token_to_id(IMAGE_SOFT_TOKEN)}")
    backend.post_processor = tokenizers.processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos>:1 $B:1", special_tokens=[("<bos>", 2)])
    config = tokenizer_config()
    config["added_tokens_decoder"] = {str(index): added_token_entry(symbol) for index, symbol in sorted({**SPECIAL_IDS, IMAGE_SOFT_TOKEN_ID: IMAGE_SOFT_TOKEN}.items())}
    return {
        "tokenizer.model": model_bytes,
        "tokenizer.json": backend.to_str(pretty=True).encode(),
        "tokenizer_config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }


def ensure_checkpoint(directory: Path, text_layers: int, vision_layers: int) -> dict:
    """The synthetic checkpoint in directory, reused when its stamp matches."""
    stamp_path = directory / ".bench-stamp.json"
    shapes = layer_shapes(text_layers, vision_layers)
    if stamp_path.exists():
        try:
            stamp = json.loads(stamp_path.read_text())
            if (stamp["generator_version"], stamp["text_layers"], stamp["vision_layers"]) == (GENERATOR_VERSION, text_layers, vision_layers) and all(
                (directory / name).is_file() and (directory / name).stat().st_size == size for name, size in stamp["files"].items()
            ):
                log(f"reusing the checkpoint in {directory} (stamp matches)")
                return {**stamp, "generated_s": None, "reused": True}
        except (ValueError, KeyError, TypeError):
            pass
    total = sum(_numel(shape) * 2 for shape in shapes.values())
    log(f"writing a checkpoint ({text_layers} text, {vision_layers} vision layers, {total / 1e9:.2f} GB) into {directory} …")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    started = time.perf_counter()
    groups = shard_assignment(shapes, DTYPE)
    files: dict[str, int] = {}
    weight_map: dict[str, str] = {}
    for shard, names in zip(shard_file_names(len(groups)), groups):
        files[shard] = _write_shard(directory / shard, names, shapes)
        weight_map.update({name: shard for name in names})
        log(f"  {shard}: {files[shard] / 1e9:.2f} GB, {len(names)} tensors")
    config, config_changes = model_config(text_layers, vision_layers)
    index = {"metadata": {"total_parameters": total // 2, "total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    small = {"model.safetensors.index.json": (json.dumps(index, indent=2) + "\n").encode(),
             "config.json": (json.dumps(config, indent=2) + "\n").encode()}
    small.update({name: (reference_dir() / reference).read_bytes() for name, reference in REFERENCE_FILES.items()})
    small.update(tokenizer_files())
    for name, content in small.items():
        (directory / name).write_bytes(content)
        files[name] = len(content)
    seconds = time.perf_counter() - started
    text_parameters = sum(_numel(shape) for name, shape in shapes.items() if name.startswith("language_model."))
    stamp = {
        "generator_version": GENERATOR_VERSION, "text_layers": text_layers, "vision_layers": vision_layers,
        "tensors": len(shapes), "tensor_bytes": total, "parameters": total // 2, "text_parameters": text_parameters,
        "vision_parameters": total // 2 - text_parameters, "shards": shard_file_names(len(groups)), "files": files,
        "config_changes": config_changes,
    }
    stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    log(f"  done in {seconds:.1f}s")
    return {**stamp, "generated_s": round(seconds, 2), "reused": False}


CHECK_SCRIPT = r'''
import json, sys, time
import numpy as np, sentencepiece, torch, transformers
from PIL import Image
directory, forward = sys.argv[1], sys.argv[2] == "1"
special = json.loads(sys.argv[3])
result = {}
processor = sentencepiece.SentencePieceProcessor(model_file=directory + "/tokenizer.model")
result["sentencepiece_pieces"] = processor.get_piece_size()
result["sentencepiece_special_ids_ok"] = all(processor.piece_to_id(symbol) == int(index) for index, symbol in special.items())
tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
messages = [{"role": "system", "content": "You are a helpful medical assistant."}, {"role": "user", "content": "Describe the chest X-ray."}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
result["tokenizer_class"] = type(tokenizer).__name__
result["chat_ids_head"] = list(ids[:3]) + ["…"] + list(ids[-4:])
result["chat_template_ok"] = ids[0] == 2 and ids[1] == 105 and ids.count(106) == 1 and ids.count(105) == 2
result["tokenizer_special_ids_ok"] = all(tokenizer.convert_tokens_to_ids(symbol) == int(index) for index, symbol in special.items()) and tokenizer.convert_tokens_to_ids("<image_soft_token>") == 262144
processor = transformers.AutoProcessor.from_pretrained(directory)
image = Image.fromarray((np.indices((64, 64)).sum(axis=0) % 32 * 8).astype("uint8")).convert("RGB")
chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the findings."}]}]
text = processor.apply_chat_template(chat, add_generation_prompt=True)
inputs = processor(text=text, images=image, return_tensors="pt")
tokens = inputs["input_ids"][0].tolist()
result["processor_class"] = type(processor).__name__
result["processor_ok"] = tokens.count(262144) == 256 and tokens.count(255999) == 1 and tokens.count(256000) == 1 and tuple(inputs["pixel_values"].shape) == (1, 3, 896, 896)
if forward:
    for dtype in ("bfloat16", "float32"):
        started = time.perf_counter()
        model = transformers.Gemma3ForConditionalGeneration.from_pretrained(directory, dtype=getattr(torch, dtype)).eval()
        # float32 with the image (vision tower, projector, decoder); bfloat16 on the text prompt alone
        # (CPU bf16 matmuls are slow: with the image it takes minutes)
        feed = inputs if dtype == "float32" else {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        with torch.no_grad():
            logits = model(**{k: (v.to(model.dtype) if v.is_floating_point() else v) for k, v in feed.items()}).logits[0, -8:].float()
        top = torch.topk(logits, 2, dim=-1).values
        result[f"forward_{dtype}"] = {"finite": bool(torch.isfinite(logits).all()), "logit_std": round(float(logits.std()), 3),
                                      "logit_max": round(float(logits.abs().max()), 2), "min_top2_margin": round(float((top[:, 0] - top[:, 1]).min()), 4),
                                      "seconds": round(time.perf_counter() - started, 1)}
        del model
print(json.dumps(result))
'''


def check_checkpoint(directory: Path, forward: bool, env: dict) -> dict:
    """The checkpoint as a user would load it (a child process: its memory goes when it ends)."""
    run = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, str(directory), "1" if forward else "0", json.dumps(SPECIAL_IDS)],
                         capture_output=True, text=True, env=env)
    if run.returncode:
        return {"error": run.stderr[-1500:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- cgroups and sampling
class MemoryCgroup:
    """A cgroup v1 memory controller group with a hard limit. Everything started inside it (and its
    children) is charged to it; above the limit the kernel's OOM killer kills inside it only."""

    BASE = Path("/sys/fs/cgroup/memory")

    def __init__(self, name: str, limit_bytes: int | None):
        self.path = self.BASE / name
        self.limit = limit_bytes
        self.enabled = limit_bytes is not None
        if self.enabled:
            if self.path.exists():
                self._remove()
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            try:
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))  # no swap escape
            except OSError:
                pass

    @classmethod
    def available(cls) -> bool:
        return cls.BASE.is_dir() and os.access(cls.BASE, os.W_OK)

    def read(self, name: str) -> str:
        return (self.path / name).read_text() if self.enabled else ""

    def pids(self) -> list[int]:
        return [int(pid) for pid in self.read("cgroup.procs").split()] if self.enabled else []

    def stat(self) -> dict[str, int]:
        return {key: int(value) for key, value in (line.split() for line in self.read("memory.stat").splitlines())} if self.enabled else {}

    def reset_peak(self) -> None:
        if self.enabled:
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def summary(self) -> dict:
        if not self.enabled:
            return {"cgroup": None}
        oom = dict(line.split() for line in self.read("memory.oom_control").splitlines())
        return {"cgroup": str(self.path), "limit_bytes": self.limit, "max_usage_bytes": int(self.read("memory.max_usage_in_bytes")),
                "failcnt": int(self.read("memory.failcnt")), "oom_kills": int(oom.get("oom_kill", 0)), "under_oom": oom.get("under_oom") == "1"}

    def preexec(self):
        """For subprocess: the child joins the group before it execs."""
        if not self.enabled:
            return None
        procs = self.path / "cgroup.procs"
        return lambda: procs.write_text(str(os.getpid()))

    def _remove(self) -> None:
        for pid in self.pids():
            try:
                (self.BASE / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass
        try:
            self.path.rmdir()
        except OSError:
            pass

    def close(self) -> None:
        if self.enabled:
            self._remove()


def _status(pid: int) -> dict[str, int]:
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                frontier += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


class Sampler:
    """Every `interval` s: each process of the cgroup (or of the process tree) — RSS, anonymous RSS,
    file RSS — and the cgroup's own anon (memory.stat total_rss). Peaks are kept per phase (a step
    of the build, named from its `run NAME` line). VmHWM, the kernel's own peak per process, catches
    what sampling misses; there is no such high-water mark for anonymous memory alone."""

    def __init__(self, cgroup: MemoryCgroup, root_pid: int | None = None, interval: float = 0.1):
        self.cgroup, self.root_pid, self.interval = cgroup, root_pid, interval
        self.phase = "(start)"
        self.phases: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self, root_pid: int | None = None) -> None:
        self.root_pid = root_pid or self.root_pid
        self.thread.start()

    def enter(self, phase: str) -> None:
        with self.lock:
            self.phase = phase
            self.phases.setdefault(phase, {"started": time.perf_counter()})
        self.cgroup.reset_peak()

    def leave(self, phase: str) -> None:
        with self.lock:
            record = self.phases.setdefault(phase, {})
            record["ended"] = time.perf_counter()
            if self.cgroup.enabled:
                record["cgroup_max_usage_bytes"] = int(self.cgroup.read("memory.max_usage_in_bytes"))
            self.phase = "(between steps)"

    def _pids(self) -> list[int]:
        pids = self.cgroup.pids()
        return pids if pids else (_descendants(self.root_pid) if self.root_pid else [])

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            processes = {pid: _status(pid) for pid in self._pids()}
            processes = {pid: status for pid, status in processes.items() if status}
            if not processes:
                continue
            tree_rss = sum(s.get("VmRSS", 0) for s in processes.values())
            tree_anon = sum(s.get("RssAnon", 0) for s in processes.values())
            largest = max(processes.values(), key=lambda s: s.get("VmRSS", 0))
            cgroup_anon = self.cgroup.stat().get("total_rss") if self.cgroup.enabled else None
            with self.lock:
                record = self.phases.setdefault(self.phase, {})
                for key, value in (("tree_rss_bytes", tree_rss), ("tree_anon_bytes", tree_anon), ("process_rss_bytes", largest.get("VmRSS", 0)),
                                   ("process_anon_bytes", max(s.get("RssAnon", 0) for s in processes.values())),
                                   ("process_file_bytes", max(s.get("RssFile", 0) for s in processes.values())),
                                   ("process_hwm_bytes", max(s.get("VmHWM", 0) for s in processes.values())),
                                   ("cgroup_anon_bytes", cgroup_anon)):
                    if value is not None:
                        record[key] = max(record.get(key, 0), value)

    def stop(self) -> dict[str, dict]:
        self.stop_event.set()
        self.thread.join(timeout=5)
        return self.phases


def run_measured(label: str, command: list[str], cgroup: MemoryCgroup, logs: Path, env: dict, cwd: Path | None = None,
                 step_lines: bool = False, timeout: float | None = None) -> dict:
    """Run command inside cgroup, sampling memory; with step_lines, phases follow the CLI's
    `run NAME (kind)` / `done NAME in Xs` / `cached NAME` lines."""
    sampler = Sampler(cgroup)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=cgroup.preexec())
    sampler.start(process.pid)
    sampler.enter("(whole)") if not step_lines else None
    steps: dict[str, dict] = {}
    with open(logs / f"{label}.log", "w") as logfile:
        for raw in process.stdout:
            line = raw.decode(errors="replace")
            logfile.write(line)
            logfile.flush()
            text = line.strip()
            if step_lines:
                if match := re.match(r"run\s+(\S+) \((\S+)\)", text):
                    steps[match.group(1)] = {"kind": match.group(2), "ran": True}
                    sampler.enter(match.group(1))
                elif match := re.match(r"done\s+(\S+) in ([0-9.]+)s", text):
                    sampler.leave(match.group(1))
                    steps.setdefault(match.group(1), {})["cli_s"] = float(match.group(2))
                elif match := re.match(r"error: (.*)", text):
                    for name, step in steps.items():
                        if "cli_s" not in step and step.get("ran"):
                            step["error"] = match.group(1)[:200]
                elif match := re.match(r"cached (\S+)", text):
                    steps[match.group(1)] = {"ran": False}
    try:
        rc = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        rc = process.wait()
    wall = time.perf_counter() - started
    phases = sampler.stop()
    for name, phase in phases.items():
        if "started" in phase:
            phase["wall_s"] = round(phase.get("ended", time.perf_counter()) - phase["started"], 2)
        phase.pop("started", None)
        phase.pop("ended", None)
    peaks = {key: max((phase.get(key) or 0) for phase in phases.values()) for key in ("tree_rss_bytes", "tree_anon_bytes", "process_hwm_bytes", "cgroup_anon_bytes")}
    output = (logs / f"{label}.log").read_text(errors="replace")
    return {"command": " ".join(command), "rc": rc, "wall_s": round(wall, 2), "steps": steps, "phases": phases, "peaks": peaks,
            "cgroup": cgroup.summary(), "tail": output[-2000:] if rc else output[-400:]}


# --------------------------------------------------------------------------- the runs
def scratch_project(base: Path, parity_override: dict | None = None) -> Path:
    """A project holding a copy of the real manifest; `parity_override` replaces thresholds of its
    targets' parity sections (the real ones are for the real weights, see --parity-override)."""
    shutil.rmtree(base, ignore_errors=True)
    (base / "manifests").mkdir(parents=True)
    (base / "lock").mkdir()
    target = base / "manifests" / MANIFEST.name
    shutil.copy2(MANIFEST, target)
    if parity_override:
        import yaml

        manifest = yaml.safe_load(MANIFEST.read_text())
        for spec in manifest["targets"].values():  # every gated target: the bundle's and the onnx target's
            if isinstance(spec.get("parity"), dict):
                spec["parity"].update(parity_override)
        target.write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True))
    return target


def tree_bytes(*directories: Path, allocated: bool = False) -> int:
    """Bytes of the files under the directories, each inode once across all of them (out/'s hard
    links to store objects hold no bytes of their own): their sizes, or with `allocated` the blocks
    the disk holds for them (what `du` counts: a file whose copied blocks were freed, as the tflite
    layout rewrite frees them, keeps its size but not its blocks)."""
    seen, total = set(), 0
    for directory in directories:
        for dirpath, _, files in os.walk(directory):
            for name in files:
                try:
                    status = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if (status.st_dev, status.st_ino) not in seen:
                    seen.add((status.st_dev, status.st_ino))
                    total += status.st_blocks * 512 if allocated else status.st_size
    return total


class DiskSampler:
    """The most bytes the directories held at once on the disk while a build ran (their allocated
    blocks, tree_bytes every interval s; a file linked into two of them counts once), and when:
    seconds after the sampler started."""

    def __init__(self, directories: list[Path], interval: float = 0.5):
        self.directories, self.interval, self.peak, self.peak_at_s = directories, interval, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        while True:
            held = tree_bytes(*(directory for directory in self.directories if directory.exists()), allocated=True)
            if held > self.peak:
                self.peak, self.peak_at_s = held, round(time.monotonic() - self._start, 1)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "DiskSampler":
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._run()  # the final state too (the event is set: one sample)


def disk_figures(predicted: dict, store: Path, out: Path, peak: int, peak_at_s: float | None = None) -> dict:
    """The plan's disk prediction (plan --json's `disk`) beside what the build stored and needed
    (the peak, and when in the build it was: seconds after the build started)."""
    objects = tree_bytes(store / "objects")
    return {
        "predicted_store_bytes": predicted.get("store_bytes"), "store_bytes": objects,
        "predicted_need_bytes": predicted.get("need_bytes"), "peak_bytes": peak,
        "store_ratio": _ratio(predicted.get("store_bytes"), objects), "need_ratio": _ratio(predicted.get("need_bytes"), peak),
        "dist_bytes": tree_bytes(out) if out.exists() else 0, "peak_at_s": peak_at_s,
    }


def compare_records(earlier: Path, store: Path) -> dict:
    """Step records (key → output sha256 and size) of an earlier build in another fresh store against
    this build's: the same key must have produced the same bytes. Records of keys only one build has
    (e.g. a parity step whose thresholds differ) are listed, not judged."""
    def records(directory: Path) -> dict:
        return {path.stem: json.loads(path.read_text())["outputs"] for path in sorted(directory.rglob("*.json"))}

    before, now = records(earlier), records(store / "steps")
    shared = sorted(set(before) & set(now))
    differing = [key for key in shared if before[key] != now[key]]
    return {"earlier_sha256": sorted({output["sha256"] for outputs in before.values() for output in outputs.values()}),
            "mode": f"step records of an earlier build in a fresh store ({earlier})", "compared_steps": len(shared),
            "compared_files": sum(len(before[key]) for key in shared), "differing": differing,
            "only_earlier": sorted(set(before) - set(now)), "only_now": sorted(set(now) - set(before)),
            "identical": bool(shared) and not differing}


def files_of(directory: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(8 << 20):
                    digest.update(block)
            found[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return found


RUNTIME_SCRIPT = r'''
import json, sys, time
import litert_lm
bundle, tokens = sys.argv[1], int(sys.argv[2])
started = time.perf_counter()
engine = litert_lm.Engine(bundle, backend=litert_lm.Backend.CPU(thread_count=2), cache_dir=":nocache")
loaded = time.perf_counter()
conversation = engine.create_conversation(sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0), max_output_tokens=tokens)
sent = time.perf_counter()
times, pieces = [], []
for message in conversation.send_message_async("What are the symptoms of pneumonia?"):
    times.append(time.perf_counter())
    pieces.append(str(message))
result = {"load_s": round(loaded - started, 2), "chunks": len(times), "text": "".join(pieces)[:200]}
if times:
    result["time_to_first_token_s"] = round(times[0] - sent, 3)
    result["decode_tokens_per_s"] = round((len(times) - 1) / (times[-1] - times[0]), 2) if len(times) > 1 and times[-1] > times[0] else None
try:
    info = conversation.get_benchmark_info()
    result["benchmark_info"] = {k: getattr(info, k) for k in dir(info) if not k.startswith("_") and isinstance(getattr(info, k), (int, float))}
except Exception as error:  # the runtime reports only when benchmarking is enabled
    result["benchmark_info"] = f"unavailable: {type(error).__name__}"
print(json.dumps(result))
'''


def export_hf_command(checkpoint: Path, output: Path) -> list[str]:
    """Bare litert-torch export_hf with the manifest's options (task, lengths, recipes)."""
    import yaml

    bundle = yaml.safe_load(MANIFEST.read_text())["targets"]["bundle"]
    return [sys.executable, "-m", "litert_torch.generative.export_hf", f"--model={checkpoint}", f"--output_dir={output}",
            f"--task={bundle['task']}", f"--prefill_lengths={','.join(map(str, bundle['prefill_lengths']))}",
            f"--cache_length={bundle['cache_length']}", f"--quantization_recipe={bundle['quantization']['text_decoder']['recipe']}",
            f"--vision_encoder_quantization_recipe={bundle['quantization']['vision_encoder']['recipe']}"]


def parity_from_lock(lock: Path) -> dict:
    import yaml

    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text())
    found = {}

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                if "parity" in str(key) and isinstance(item, dict):
                    found[f"{path}.{key}".strip(".")] = item
                walk(item, f"{path}.{key}")

    walk(data, "")
    return found


# --------------------------------------------------------------------------- figures
def step_rows(build: dict, predicted: dict) -> list[dict]:
    rows = []
    for name, phase in build["phases"].items():
        if name.startswith("("):
            continue
        step = dict(build["steps"].get(name, {}))
        if "cli_s" not in step and not step.get("error") and (error := re.search(r"^error: (.*)$", build.get("tail", ""), re.MULTILINE)):
            step["error"] = error.group(1)[:200]
        rows.append({"step": name, "kind": step.get("kind"), "wall_s": phase.get("wall_s"),
                     "status": "ok" if "cli_s" in step else ("failed: " + step["error"] if step.get("error") else "did not finish"),
                     "peak_rss_bytes": max(phase.get("process_hwm_bytes") or 0, phase.get("process_rss_bytes") or 0) or None,
                     "tree_rss_bytes": phase.get("tree_rss_bytes"), "anon_peak_bytes": phase.get("process_anon_bytes"),
                     "tree_anon_bytes": phase.get("tree_anon_bytes"), "cgroup_anon_bytes": phase.get("cgroup_anon_bytes"),
                     "cgroup_max_usage_bytes": phase.get("cgroup_max_usage_bytes"), "predicted_bytes": predicted.get(name)})
    return rows


def _identity(flags: list) -> str:
    """True/False over compared files; "—" where some were not compared (not made by the earlier build)."""
    return "—" if any(flag is None for flag in flags) else str(all(flags))


def _gib(value) -> str:
    return "—" if value is None else f"{value / GIB:.2f}"


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def summarize(result: dict) -> tuple[dict, list[dict]]:
    checkpoint, build = result["checkpoint"], result.get("build", {})
    rows = result.get("steps", [])
    text_f32 = checkpoint["text_parameters"] * 4
    text_row = next((row for row in rows if row["step"].endswith("export_text")), None)
    build_peak = max((row["tree_rss_bytes"] or 0 for row in rows), default=None)
    export_hf = result.get("export_hf", {})
    ratios = {
        "text_export_peak_over_text_f32": _ratio(text_row and text_row["peak_rss_bytes"], text_f32),
        "text_export_anon_over_text_f32": _ratio(text_row and text_row["anon_peak_bytes"], text_f32),
        # Only between two runs that completed: a killed run's peak is the limit, not its need.
        "modelforge_peak_over_export_hf_peak": _ratio(build_peak, export_hf.get("peaks", {}).get("tree_rss_bytes")) if build.get("rc") == 0 and export_hf.get("rc") == 0 else None,
        "modelforge_wall_over_export_hf_wall": _ratio(build.get("wall_s"), export_hf.get("wall_s")) if export_hf.get("rc") == 0 else None,
    }
    # Steps are judged by anonymous memory: resident file pages (the mapped checkpoint, the graph being
    # written) are page cache the kernel reclaims; the RSS figures are in the table beside them.
    largest_step = max((row["anon_peak_bytes"] or 0 for row in rows), default=0)
    cg = build.get("cgroup", {})
    targets = [
        {"target": f"whole build completes inside a {MACHINE_TARGET_GIB} GiB budget (cgroup {_gib(cg.get('limit_bytes'))} GiB)",
         "value": f"rc {build.get('rc')}, OOM kills {cg.get('oom_kills')}", "passed": build.get("rc") == 0 and not cg.get("oom_kills")},
        {"target": f"no step peaks above {STEP_TARGET_GIB} GiB (anonymous memory of the step's worker)", "value": f"{_gib(largest_step)} GiB",
         "passed": None if build.get("rc") != 0 else largest_step <= STEP_TARGET_GIB * GIB},  # a killed step has no peak to judge
        {"target": f"text export anonymous peak ≤ {TEXT_EXPORT_FACTOR} × text decoder f32 bytes ({_gib(text_f32)} GiB)",
         "value": ratios["text_export_anon_over_text_f32"], "passed": None if ratios["text_export_anon_over_text_f32"] is None else ratios["text_export_anon_over_text_f32"] <= TEXT_EXPORT_FACTOR},
        {"target": f"store after the build within ±{DISK_TOLERANCE:.0%} of the plan's prediction (predicted / measured)",
         "value": (result.get("disk") or {}).get("store_ratio"),
         "passed": None if not (result.get("disk") or {}).get("store_ratio") else abs(result["disk"]["store_ratio"] - 1) <= DISK_TOLERANCE},
        {"target": f"disk the build held at its peak (store and out/) within ±{DISK_TOLERANCE:.0%} of the plan's prediction",
         "value": (result.get("disk") or {}).get("need_ratio"),
         "passed": None if not (result.get("disk") or {}).get("need_ratio") else abs(result["disk"]["need_ratio"] - 1) <= DISK_TOLERANCE},
        {"target": "second build in a fresh store byte-identical (every output)", "value": result.get("rebuild", {}).get("identical"),
         "passed": result.get("rebuild", {}).get("identical")},
        {"target": "LiteRT-LM runtime loads the .litertlm on CPU and generates", "value": (result.get("runtime") or {}).get("chunks"),
         "passed": bool((result.get("runtime") or {}).get("chunks"))},
    ]
    return ratios, targets


def tables(result: dict) -> list[tuple[str, list[str], list[list]]]:
    out = []
    rows = [[r["step"], r["kind"] or "", f"{r['wall_s']:.1f}" if r["wall_s"] is not None else "—", _gib(r["peak_rss_bytes"]), _gib(r["anon_peak_bytes"]),
             _gib(r["tree_rss_bytes"]), _gib(r["predicted_bytes"]), _gib(r["cgroup_max_usage_bytes"]), r.get("status", "")] for r in result.get("steps", [])]
    build = result.get("build", {})
    rows.append(["(whole build)", "", f"{build.get('wall_s', 0):.1f}", _gib(build.get("peaks", {}).get("process_hwm_bytes")), "", _gib(build.get("peaks", {}).get("tree_rss_bytes")), "",
                 _gib(max([build.get("cgroup", {}).get("max_usage_bytes") or 0] + [r["cgroup_max_usage_bytes"] or 0 for r in result.get("steps", [])]) or None), f"rc {build.get('rc')}, OOM kills {build.get('cgroup', {}).get('oom_kills')}"])
    out.append(("Steps of the first build (fresh store)", ["step", "kind", "wall s", "peak RSS GiB", "anon peak GiB", "all processes GiB", "predicted GiB", "cgroup max GiB (incl. page cache)", "status"], rows))
    outputs = result.get("outputs", {})
    out.append(("Outputs", ["file", "MB", "identical in the second build (— : not made by it)"],
                [[name, f"{info['bytes'] / 1e6:.1f}", str(info.get("identical"))] for name, info in outputs.items() if info["bytes"] >= 1e6]
                + [[f"({sum(1 for info in outputs.values() if info['bytes'] < 1e6)} files under 1 MB)", f"{sum(info['bytes'] for info in outputs.values() if info['bytes'] < 1e6) / 1e6:.1f}",
                    _identity([info.get("identical") for info in outputs.values() if info["bytes"] < 1e6])]]))
    export_hf = result.get("export_hf")
    if export_hf:
        cg = export_hf.get("cgroup", {})
        out.append(("Bare litert-torch export_hf, same checkpoint and options", ["rc", "wall s", "peak RSS GiB", "anon peak GiB", "cgroup limit GiB", "cgroup max GiB", "OOM kills", "outcome"],
                    [[export_hf["rc"], export_hf["wall_s"], _gib(export_hf["peaks"].get("process_hwm_bytes")), _gib(export_hf["peaks"].get("tree_anon_bytes")),
                      _gib(cg.get("limit_bytes")), _gib(cg.get("max_usage_bytes")), cg.get("oom_kills"), export_hf.get("outcome")]]))
    runtime = result.get("runtime")
    if runtime:
        out.append(("LiteRT-LM runtime on CPU (2 threads, greedy)", ["load s", "time to first token s", "decode tokens/s", "chunks", "text (head)"],
                    [[runtime.get("load_s"), runtime.get("time_to_first_token_s"), runtime.get("decode_tokens_per_s"), runtime.get("chunks"),
                      "`" + str(runtime.get("text", runtime.get("error", "")))[:60].replace("|", "/").replace("\n", " ") + "`"]]))
    parity = {name: value for name, value in (result.get("parity") or {}).items() if "passed" in value}  # the results, not the step key or thresholds
    if parity:
        out.append(("Parity (from the build's lock)", ["entry", "figures"], [[name, json.dumps(value, sort_keys=True)[:300]] for name, value in parity.items()]))
    out.append(("Ratios (same run)", ["ratio", "value"], [[k, v] for k, v in result.get("ratios", {}).items()]))
    return out


def render_markdown(result: dict) -> str:
    m, c = result["machine"], result["checkpoint"]
    size = "full size" if result["full_size"] else f"SMALL RUN: {c['text_layers']} of 34 text layers, {c['vision_layers']} of 27 vision layers"
    lines = [f"<!-- {MARK} {result['label']} begin -->", f"## medgemma_4b ({size})", "",
             f"- date: {result['date']}",
             f"- machine: {m['nproc']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}; "
             f"1-min load average {m.get('loadavg_1m_at_start')} at start, {m['loadavg_1m']} at end (the machine is shared)",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             f"- checkpoint: {c['tensors']} tensors, {c['parameters'] / 1e9:.3f} B parameters ({c['text_parameters'] / 1e9:.3f} B text, "
             f"{c['vision_parameters'] / 1e9:.3f} B vision + projector), {c['tensor_bytes'] / 1e9:.2f} GB bf16 in 2 shards; config changes: "
             f"{'; '.join(c.get('config_changes') or []) or 'none'}",
             f"- checkpoint check: {json.dumps(result.get('check', {}), sort_keys=True)[:600]}",
             f"- build: `{result['build_command']}` in a scratch project, cgroup limit {_gib(result['build'].get('cgroup', {}).get('limit_bytes'))} GiB"
             f"{'; --memory-limit raised past the prediction (--ignore-prediction)' if result.get('ignore_prediction') else ''}"
             f"{'; store budget ' + result['store_budget'] if result.get('store_budget') else ''}"]
    for title, headers, rows in tables(result):
        lines += ["", f"{title}:", "", "| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    lines += ["", *targets_table(result["targets"])]
    if result.get("notes"):
        lines += [""] + [f"- {note}" for note in result["notes"]]
    lines.append(f"<!-- {MARK} {result['label']} end -->")
    return "\n".join(lines) + "\n"


def update_markdown(path: Path, section: str, label: str) -> None:
    replace_section(path, f"{MARK} {label}", section)


def render_text(result: dict) -> str:
    return "\n".join(text_tables(tables(result), result["targets"]))


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-layers", type=int, default=FULL_TEXT_LAYERS, help="decoder layers kept (34: full MedGemma 4B)")
    parser.add_argument("--vision-layers", type=int, default=None, help="vision layers kept (default: 27 at full size, else 2)")
    parser.add_argument("--work", type=Path, default=BENCH / "out" / "medgemma_4b", help="checkpoints and scratch (gitignored)")
    parser.add_argument("--results", type=Path, default=None, help="JSON (default bench/results/medgemma_4b[-L<text>v<vision>].json)")
    parser.add_argument("--markdown", type=Path, default=BENCH / "RESULTS.md", help="markdown file whose section for this size is replaced")
    parser.add_argument("--build-limit", default="22GiB", help="memory cgroup limit of each modelforge build (default 22GiB)")
    parser.add_argument("--export-hf-limit", default="22GiB", help="memory cgroup limit of bare export_hf (default 22GiB)")
    parser.add_argument("--skip", default="", help="comma-separated subset of check,rebuild,runtime,export_hf to leave out")
    parser.add_argument("--ignore-prediction", action="store_true", help="pass --memory-limit 1024GiB so a too-high prediction does not refuse the build (the cgroup still bounds it)")
    parser.add_argument("--runtime-tokens", type=int, default=16)
    parser.add_argument("--no-cgroup", action="store_true", help="run without memory cgroups (unbounded; only where cgroups are not available)")
    parser.add_argument("--resume", type=Path, default=None, help="a previous full run's results JSON: keep its store (steps it finished are cached) and take those steps' figures from it")
    parser.add_argument("--parity-override", default="", help="comma-separated KEY=VALUE thresholds replacing the manifest's parity thresholds in the scratch copy (random weights are not the real model: the real thresholds are for the real weights)")
    parser.add_argument("--compare-records", type=Path, default=None, help="the steps/ directory of an earlier build's store: judge byte identity by its step records instead of a second build here (for a disk too small for two 4B stores)")
    parser.add_argument("--store-budget", default="", help="the builds' --store-budget (docs/store.md: what the store drops once read, and the disk the build needs under it)")
    parser.add_argument("--tag", default="", help="a word added to the run's label: its RESULTS.md section and default results file (e.g. `after`: beside, not over, the full-size section)")
    parser.add_argument("--render", type=Path, default=None, help="only re-render the figures and RESULTS.md section of a results JSON")
    args = parser.parse_args(argv)
    from modelforge.memory import parse_size

    if args.render:
        result = json.loads(args.render.read_text())
        if "resumed_from" not in result:  # a resumed run's rows include the earlier runs' (kept as they are)
            result["steps"] = step_rows(result["build"], result["plan"]["memory_predicted_bytes"])
        result["ratios"], result["targets"] = summarize(result)
        args.render.write_text(json.dumps(result, indent=1, default=str) + "\n")
        update_markdown(args.markdown, render_markdown(result), result["label"])
        print(render_text(result))
        return 0

    vision_layers = args.vision_layers if args.vision_layers is not None else (FULL_VISION_LAYERS if args.text_layers == FULL_TEXT_LAYERS else 2)
    if not (1 <= args.text_layers <= FULL_TEXT_LAYERS and 1 <= vision_layers <= FULL_VISION_LAYERS):
        parser.error("--text-layers in 1..34, --vision-layers in 1..27")
    full = args.text_layers == FULL_TEXT_LAYERS and vision_layers == FULL_VISION_LAYERS
    label = "full" if full else f"L{args.text_layers}v{vision_layers}"
    section = f"{label} {args.tag}" if args.tag else label  # the checkpoint and scratch directories stay the label's
    results_path = args.results or BENCH / "results" / ("medgemma_4b" + ("" if full else f"-{label}") + (f"-{args.tag}" if args.tag else "") + ".json")
    skip = {item for item in args.skip.split(",") if item}
    if not args.no_cgroup and not MemoryCgroup.available():
        parser.error(f"{MemoryCgroup.BASE} is not writable (needs root and cgroup v1's memory controller); rerun as root or pass --no-cgroup")
    build_limit = None if args.no_cgroup else parse_size(args.build_limit)
    export_limit = None if args.no_cgroup else parse_size(args.export_hf_limit)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = work / f"checkpoint-{label}"
    run = work / f"run-{label}"
    if args.resume:  # the first build's store stays: the steps it finished are cached, their figures come from args.resume
        previous = json.loads(args.resume.read_text())
        for name in ("logs", "project", "out-1", "out-2", "store-2", "project-2", "export_hf-out"):
            shutil.rmtree(run / name, ignore_errors=True)
    else:
        previous = None
        shutil.rmtree(run, ignore_errors=True)
    logs = run / "logs"
    logs.mkdir(parents=True)
    env = {**os.environ, **ENV, "HF_HOME": str(work / "hf-home"), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    result: dict = {"benchmark": "medgemma_4b", "label": section, "full_size": full, "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                    "machine": machine(), "versions": versions(), "filesystem": filesystem(work), "ignore_prediction": args.ignore_prediction, "notes": []}
    result["machine"]["loadavg_1m_at_start"] = result["machine"].pop("loadavg_1m")

    result["checkpoint"] = ensure_checkpoint(checkpoint_dir, args.text_layers, vision_layers) | {"dir": str(checkpoint_dir)}
    result["checkpoint"].pop("files", None)
    if "check" not in skip:
        log("checking the checkpoint (tokenizer, processor, chat template, forward at small sizes) …")
        result["check"] = check_checkpoint(checkpoint_dir, forward=args.text_layers <= 4, env=env)
        log(f"  {json.dumps(result['check'])[:400]}")

    # The plan's predictions, then the build, in a scratch project (its lock never lands in the repo).
    parity_override = {key: float(value) for key, value in (item.split("=") for item in args.parity_override.split(",") if item)}
    if parity_override:
        result["parity_override"] = parity_override
        result["notes"].append(f"Parity thresholds of the scratch manifest replaced by {parity_override}: the real manifest's are for the real "
                               "weights; on random weights int8 moves top-1 far more often (flat logits).")
    manifest = scratch_project(run / "project", parity_override)
    modelforge = [sys.executable, "-m", "modelforge.cli"]
    budget = ["--store-budget", args.store_budget] if args.store_budget else []  # else MODELFORGE_STORE_BUDGET, if set, as for a user
    if args.store_budget or os.environ.get("MODELFORGE_STORE_BUDGET"):
        result["store_budget"] = args.store_budget or os.environ["MODELFORGE_STORE_BUDGET"]
    planned = subprocess.run([*modelforge, "plan", str(manifest), "--source-dir", str(checkpoint_dir), "--store", str(run / "store-1"), "--json", *budget],
                             capture_output=True, text=True, env=env, cwd=run / "project")
    plan_json = json.loads(planned.stdout) if planned.returncode == 0 else {}
    predicted = plan_json.get("memory", {})
    result["plan"] = {"rc": planned.returncode, "memory_predicted_bytes": predicted, "disk_predicted": plan_json.get("disk", {}),
                      "error": planned.stderr[-600:] if planned.returncode else None}
    build_command = [*modelforge, "build", str(manifest), "--source-dir", str(checkpoint_dir), "--store", str(run / "store-1"), "--out", str(run / "out-1"), *budget]
    if args.ignore_prediction:
        build_command += ["--memory-limit", "1024GiB"]
    result["build_command"] = " ".join(["modelforge", *build_command[3:]]).replace(str(ROOT) + "/", "")
    drop_caches()
    log(f"build 1 (cgroup limit {args.build_limit}) …")
    cgroup = MemoryCgroup(f"modelforge-bench-build-{os.getpid()}", build_limit)
    try:
        with DiskSampler([run / "store-1", run / "out-1"]) as disk_sampler:
            result["build"] = run_measured("build-1", build_command, cgroup, logs, env, cwd=run / "project", step_lines=True)
    finally:
        cgroup.close()
    if previous is None:  # a resumed run's store held the earlier steps already
        result["disk"] = disk_figures(result["plan"]["disk_predicted"], run / "store-1", run / "out-1", disk_sampler.peak, disk_sampler.peak_at_s)
    log(f"  rc {result['build']['rc']} in {result['build']['wall_s']:.0f}s; cgroup {result['build']['cgroup']}")
    result["steps"] = step_rows(result["build"], predicted)
    if previous is not None:  # steps cached from the resumed run: its measurements, marked as such
        ran = {row["step"] for row in result["steps"]}
        earlier = [dict(row, status=f"ok in the resumed run ({previous['date']})") for row in previous.get("steps", [])
                   if row["step"] not in ran and str(row.get("status", "")).startswith("ok")]
        result["steps"] = earlier + result["steps"]
        result["resumed_from"] = {"date": previous["date"], "build": {key: previous["build"].get(key) for key in ("rc", "wall_s", "tail")}}
        if "export_hf" in skip and previous.get("export_hf"):
            result["export_hf"] = previous["export_hf"] | {"from_resumed_run": previous["date"]}
    outputs = files_of(run / "out-1") if (run / "out-1").is_dir() else {}
    result["parity"] = parity_from_lock(run / "project" / "lock" / "medgemma-1.5-litertlm.lock")

    if "rebuild" not in skip and result["build"]["rc"] == 0:
        log("build 2 (fresh store, fresh project) …")
        manifest_2 = scratch_project(run / "project-2", parity_override)
        command_2 = [*build_command]
        for flag, value in (("--store", run / "store-2"), ("--out", run / "out-2")):
            command_2[command_2.index(flag) + 1] = str(value)
        command_2[command_2.index(str(manifest))] = str(manifest_2)
        shutil.rmtree(run / "store-1", ignore_errors=True)  # disk: only the outputs of build 1 are needed now
        cgroup = MemoryCgroup(f"modelforge-bench-build2-{os.getpid()}", build_limit)
        try:
            second = run_measured("build-2", command_2, cgroup, logs, env, cwd=run / "project-2", step_lines=True)
        finally:
            cgroup.close()
        outputs_2 = files_of(run / "out-2") if (run / "out-2").is_dir() else {}
        for name, info in outputs.items():
            info["identical"] = outputs_2.get(name, {}).get("sha256") == info["sha256"]
        lock_1, lock_2 = (run / p / "lock" / "medgemma-1.5-litertlm.lock" for p in ("project", "project-2"))
        result["rebuild"] = {"rc": second["rc"], "wall_s": second["wall_s"], "cgroup": second["cgroup"], "peaks": second["peaks"],
                             "identical": second["rc"] == 0 and bool(outputs) and set(outputs) == set(outputs_2) and all(i["identical"] for i in outputs.values()),
                             "locks_identical": lock_1.exists() and lock_2.exists() and lock_1.read_bytes() == lock_2.read_bytes(),
                             "differing": sorted(name for name, info in outputs.items() if not info.get("identical")), "tail": second["tail"] if second["rc"] else ""}
        shutil.rmtree(run / "out-2", ignore_errors=True)
        shutil.rmtree(run / "store-2", ignore_errors=True)
    if args.compare_records and result["build"]["rc"] == 0:
        result["rebuild"] = compare_records(args.compare_records, run / "store-1")
        rebuild = result["rebuild"]
        earlier = set(rebuild.pop("earlier_sha256"))
        for info in outputs.values():  # an output the earlier build made too (bytes equal), or None: not made by it
            info["identical"] = True if info["sha256"] in earlier else None
        result["notes"].append(f"Byte identity judged from {rebuild['mode']}: {rebuild['compared_steps']} steps, {rebuild['compared_files']} "
                               f"files, differing {rebuild['differing'] or 'none'}; steps only in the earlier build: {len(rebuild['only_earlier'])}, "
                               f"only in this one: {len(rebuild['only_now'])} (the parity step, whose thresholds differ, and the steps after it, which the earlier build did not reach).")
    result["outputs"] = outputs

    bundles = sorted((run / "out-1").rglob("*.litertlm")) if (run / "out-1").is_dir() else []
    if "runtime" not in skip and bundles:
        log(f"runtime: litert_lm on {bundles[0].name} …")
        cgroup = MemoryCgroup(f"modelforge-bench-runtime-{os.getpid()}", build_limit)
        try:
            runtime = run_measured("runtime", [sys.executable, "-c", RUNTIME_SCRIPT, str(bundles[0]), str(args.runtime_tokens)], cgroup, logs, env, timeout=1800)
        finally:
            cgroup.close()
        lines = [line for line in (logs / "runtime.log").read_text(errors="replace").splitlines() if line.startswith("{")]
        result["runtime"] = (json.loads(lines[-1]) if runtime["rc"] == 0 and lines else {"error": runtime["tail"][-600:]}) | {
            "peak_rss_bytes": runtime["peaks"].get("process_hwm_bytes"), "rc": runtime["rc"]}
        log(f"  {result['runtime']}")

    if "export_hf" not in skip:
        output = run / "export_hf-out"
        log(f"bare export_hf (cgroup limit {args.export_hf_limit}) …")
        drop_caches()
        cgroup = MemoryCgroup(f"modelforge-bench-export-hf-{os.getpid()}", export_limit)
        try:
            export_hf = run_measured("export_hf", export_hf_command(checkpoint_dir, output), cgroup, logs, env)
        finally:
            cgroup.close()
        cg = export_hf["cgroup"]
        if export_hf["rc"] == 0:
            export_hf["outcome"] = f"completed, peak RSS {_gib(export_hf['peaks'].get('process_hwm_bytes'))} GiB"
        elif cg.get("oom_kills"):
            export_hf["outcome"] = f"OOM-killed at the {_gib(cg.get('limit_bytes'))} GiB cgroup limit"
        else:
            export_hf["outcome"] = f"failed (rc {export_hf['rc']})"
        export_hf["outputs"] = {name: info["bytes"] for name, info in files_of(output).items()} if output.is_dir() else {}
        result["export_hf"] = export_hf
        log(f"  {export_hf['outcome']} in {export_hf['wall_s']:.0f}s")
        shutil.rmtree(output, ignore_errors=True)

    if "export_hf" in skip and "export_hf" not in result and results_path.exists():
        # Bare export_hf does not depend on modelforge's code: an earlier run's figures stand, dated.
        earlier = json.loads(results_path.read_text())
        if earlier.get("export_hf"):
            result["export_hf"] = earlier["export_hf"] | {"from_resumed_run": earlier["export_hf"].get("from_resumed_run", earlier["date"])}
    result["machine"]["loadavg_1m"] = round(os.getloadavg()[0], 2)
    result["ratios"], result["targets"] = summarize(result)
    if not full:
        result["notes"].append("SMALL RUN: the real vocabulary and widths with fewer layers; the targets are those of the full size and are "
                               "evaluated here only to exercise the harness. The full-size run: `python bench/bench_medgemma_4b.py`.")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    update_markdown(args.markdown, render_markdown(result), section)
    print(render_text(result))
    print(f"\nwrote {results_path} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
