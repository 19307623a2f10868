"""Export a checkpoint as one safetensors file of the full (tp=1) model + config.json + tokenizer files.

The safetensors file is written by a small streaming writer (header first, then each tensor as it is
assembled from the memory-mapped tp shards), so peak memory stays near the largest tensor. The tied
output embedding is `word_embeddings.weight`, stored once. `load_exported` rebuilds the model without
DeepSpeed.
"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import torch

from megatron_cogview.checkpoint.convert import staged_dir, target_config
from megatron_cogview.checkpoint.layout import CheckpointError, CheckpointMeta
from megatron_cogview.checkpoint.reshard import expected_shapes, reslice_param
from megatron_cogview.checkpoint.source import CheckpointSource, Log, MappedShards, stderr_log
from megatron_cogview.config import ModelConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
EXPORT_FORMAT = "megatron-cogview-export-v1"
_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor (little-endian, as safetensors stores them)."""
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def _header(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    """The safetensors header (8-byte length + JSON padded to 8 bytes) for tensors written in order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in entries:
        if dtype not in _DTYPES:
            raise CheckpointError(f"cannot export {name}: dtype {dtype} has no safetensors name")
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(source: CheckpointSource, path: Path, config: ModelConfig, log: Log = stderr_log) -> dict[str, int]:
    """Stream the full tp=1 model of `source` into a safetensors file; returns crc32 per tensor."""
    shapes = expected_shapes(config, 1)
    inputs = MappedShards(source)
    entries = [(name, inputs.dtype(name), shape) for name, (shape, _) in shapes.items()]
    crcs: dict[str, int] = {}
    with open(path, "wb") as f:
        f.write(_header(entries, {"format": "pt", "producer": "megatron-cogview"}))
        for name, (shape, rule) in shapes.items():
            new_size = config.vocab_size if rule.kind == "vocab" else None
            tensor = reslice_param(inputs[name], rule, 1, 0, new_size)
            if tuple(tensor.shape) != shape:
                raise RuntimeError(f"exporting {name} gave shape {list(tensor.shape)}, expected {list(shape)}")
            raw = _raw(tensor)
            crcs[name] = zlib.crc32(raw)
            f.write(raw)
            del tensor, raw
    log(f"wrote {path.name} ({path.stat().st_size / 2**20:.1f} MiB)")
    return crcs


def verify_safetensors(path: Path, crcs: dict[str, int]) -> None:
    """Check the file with the safetensors library (names) and re-read every tensor's bytes (crc32)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as st:  # parses the header we wrote
        if set(st.keys()) != set(crcs):
            raise CheckpointError(f"verification of {path} failed: tensor names differ after reload")
    with open(path, "rb") as f:  # plain reads, one tensor at a time: no whole-file mapping in memory
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        start = 8 + size
        for name, crc in crcs.items():
            lo, hi = header[name]["data_offsets"]
            f.seek(start + lo)
            if zlib.crc32(f.read(hi - lo)) != crc:
                raise CheckpointError(f"verification of {path} failed: {name} differs after reload")


def _copy_tokenizers(value: Any, key: str, base: Path, out: Path, copied: dict[str, str]) -> Any:
    """Copy files named by string values of meta.tokenizers into out/tokenizer/; return them with paths rewritten."""
    if isinstance(value, dict):
        return {k: _copy_tokenizers(v, f"{key}.{k}" if key else k, base, out, copied) for k, v in value.items()}
    if not isinstance(value, str) or "\n" in value or not ("/" in value or Path(value).suffix):
        return value  # only strings that look like file paths
    for candidate in (Path(value), base / value):
        try:
            is_file = candidate.is_file()
        except OSError:
            is_file = False
        if is_file:
            taken = {Path(p).name for p in copied.values()}
            name = f"{key.replace('.', '_')}__{candidate.name}" if candidate.name in taken else candidate.name
            target = out / TOKENIZER_DIR / name
            target.parent.mkdir(exist_ok=True)
            shutil.copy2(candidate, target)
            copied[key] = str(target.relative_to(out))
            return copied[key]
    return value


def export_safetensors(source: CheckpointSource, save: str | Path, log: Log = stderr_log) -> Path:
    """Export `source` as <save>/model.safetensors + config.json (+ tokenizer files); returns <save>."""
    if source.partitioned:
        raise CheckpointError(f"{source.load} is a ZeRO-3 checkpoint (weights only in the optimizer shards): "
                              "export it with `cogview convert --export safetensors`, which consolidates it first")
    config = target_config(source, 1)
    with staged_dir(save) as out:
        crcs = write_safetensors(source, out / WEIGHTS_FILE, config, log)
        verify_safetensors(out / WEIGHTS_FILE, crcs)
        copied: dict[str, str] = {}
        tokenizers = _copy_tokenizers(dict(source.meta.tokenizers), "", source.load, out, copied)
        meta = CheckpointMeta(model=config.to_dict(), tensor_parallel_size=1, iteration=source.iteration,
                              tokenizers=tokenizers,
                              extra={**source.meta.extra, "exported_from": str(source.load)})
        doc = {"format": EXPORT_FORMAT, "weights": WEIGHTS_FILE, "model": config.to_dict(), "meta": meta.to_dict(),
               "tokenizer_files": copied}
        (out / CONFIG_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")
        log(f"exported {len(crcs)} tensors and {len(copied)} tokenizer file(s)")
    return Path(save)


def read_export(directory: str | Path) -> tuple[ModelConfig, CheckpointMeta]:
    """(model config, metadata) of an exported directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a directory written by `cogview convert --export safetensors`")
    doc = json.loads(path.read_text(encoding="utf-8"))
    return ModelConfig.from_dict(doc["model"]), CheckpointMeta.from_dict(doc["meta"])


def load_exported(
    directory: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> "torch.nn.Module":
    """A tp=1 CogViewModel with the exported weights (no DeepSpeed needed)."""
    from safetensors.torch import load_file

    from megatron_cogview.model import CogViewModel
    from megatron_cogview.parallel.sharding import mark_sharded, sharding_of
    from megatron_cogview.parallel.state import ParallelState

    config, _ = read_export(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing: the export is incomplete")
    model = CogViewModel(config, ParallelState.single(), device="meta")
    shardings = {n: sharding_of(p) for n, p in model.named_parameters()}  # assign=True drops the tags
    state = load_file(str(weights), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not fit config.json: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for name, p in model.named_parameters():
        if shardings[name].sharded:
            mark_sharded(p, shardings[name])
    return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model


__all__ = ["export_safetensors", "load_exported", "read_export", "write_safetensors"]
