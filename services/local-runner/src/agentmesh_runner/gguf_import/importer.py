"""Turns a llama-architecture GGUF file into an mlx-lm model directory, atomically.

Everything is written to a temporary directory beside the destination and renamed into place
at the end, so a corrupt file or a crash never leaves a half-written model that the runner
would try to serve. ``import.json`` records what was imported from where, so a later start
can tell that the directory is current (:func:`ensure_imported`) instead of importing again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlx.core as mx

from agentmesh_common import FailedPrecondition, InvalidArgument, NotFound

from .header import GgufFormatError, read_tensor_table
from .tokenizer import GgufVocabulary, build_tokenizer, check_round_trip
from .weights import SUPPORTED_TYPES, llama_config, map_weights

__all__ = ["IMPORTER_VERSION", "ImportResult", "ensure_imported", "import_gguf", "model_name_for"]

# Bump when the output for the same GGUF changes, so cached imports are redone.
IMPORTER_VERSION = 1
MARKER = "import.json"
_SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class ImportResult:
    """A model directory made from a GGUF file."""

    name: str
    path: Path
    seconds: float
    tensors: int
    quantization: dict[str, Any]
    float32: bool
    tokens_checked: int
    reused: bool = False


def model_name_for(source: Path) -> str:
    """The default model name for a GGUF file: its stem, lower case, safe as a directory."""
    name = re.sub(r"[^a-z0-9._-]+", "-", source.stem.lower()).strip("-.")
    return name or "gguf-model"


def _default_float32() -> bool:
    # MLX's CPU backend runs quantized matmuls with float16 scales ~80x slower than float32.
    return bool(mx.default_device().type != mx.DeviceType.gpu)


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise InvalidArgument.for_field("name", "must be a plain directory name")


def import_gguf(
    source: Path,
    models_dir: Path,
    name: str | None = None,
    *,
    float32: bool | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Import ``source`` into ``models_dir/name``; blocking (seconds for a small model).

    NotFound if ``source`` is missing; FailedPrecondition naming what is unsupported (the
    architecture, a tensor type, the tokenizer) or why the file is unreadable; AlreadyExists
    semantics are left to the caller: an existing directory is replaced only if ``overwrite``.
    """
    started = time.monotonic()
    name = name or model_name_for(source)
    _check_name(name)
    if not source.is_file():
        raise NotFound(f"GGUF file {source} does not exist", reason="MODEL_NOT_FOUND")
    use_float32 = _default_float32() if float32 is None else float32
    destination = models_dir / name
    if destination.exists() and not overwrite:
        raise FailedPrecondition(
            f"{destination} already exists", reason="MODEL_EXISTS", metadata={"model": name}
        )
    tensors, meta = _read(source)
    architecture = str(meta.get("general.architecture", ""))
    if architecture not in _SUPPORTED_ARCHITECTURES:
        raise FailedPrecondition(
            f"{source.name}: architecture {architecture!r} is not supported (llama is)",
            reason="UNSUPPORTED_ARCHITECTURE",
            metadata={"architecture": architecture},
        )
    heads = int(meta["llama.attention.head_count"].item())
    kv_heads = int(
        meta.get("llama.attention.head_count_kv", meta["llama.attention.head_count"]).item()
    )
    weights, quantization = map_weights(
        tensors, heads=heads, kv_heads=kv_heads, float32=use_float32
    )
    vocab = GgufVocabulary.from_metadata(meta)
    tokenizer, tokenizer_config = build_tokenizer(vocab)
    checked = check_round_trip(tokenizer, vocab)
    config = llama_config(
        meta,
        vocab_size=len(vocab.tokens),
        tied="lm_head.weight" not in weights,
        quantization=quantization,
    )
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.importing-", dir=models_dir))
    try:
        mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(
            json.dumps(tokenizer_config, indent=2) + "\n"
        )
        result = ImportResult(
            name=name,
            path=destination,
            seconds=time.monotonic() - started,
            tensors=len(tensors),
            quantization=quantization,
            float32=use_float32,
            tokens_checked=checked,
        )
        (staging / MARKER).write_text(json.dumps(_marker(source, result), indent=2) + "\n")
        _replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def ensure_imported(
    source: Path, models_dir: Path, name: str, *, float32: bool | None = None
) -> ImportResult:
    """``models_dir/name`` made from ``source``: reused when its ``import.json`` says it was
    made from this very file by this importer version, imported (again) otherwise."""
    started = time.monotonic()
    use_float32 = _default_float32() if float32 is None else float32
    destination = models_dir / name
    try:
        recorded = json.loads((destination / MARKER).read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded is not None and recorded.get("source") == _source_facts(source, use_float32):
        required = ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")
        if all((destination / file).is_file() for file in required):
            return ImportResult(
                name=name,
                path=destination,
                seconds=time.monotonic() - started,
                tensors=int(recorded.get("tensors", 0)),
                quantization=dict(recorded.get("quantization", {})),
                float32=use_float32,
                tokens_checked=int(recorded.get("tokens_checked", 0)),
                reused=True,
            )
    return import_gguf(source, models_dir, name, float32=use_float32, overwrite=True)


def _read(source: Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    try:
        table = read_tensor_table(source)
    except (GgufFormatError, OSError) as exc:
        raise FailedPrecondition(
            f"{source.name} is not a readable GGUF file: {exc}",
            reason="GGUF_INVALID",
            metadata={"file": source.name},
        ) from exc
    unsupported = sorted({t.type_name for t in table if t.type_name not in SUPPORTED_TYPES})
    if unsupported:
        example = next(t.name for t in table if t.type_name == unsupported[0])
        raise FailedPrecondition(
            f"{source.name}: tensor type {', '.join(unsupported)} is not supported "
            f"(e.g. {example}); supported: {', '.join(sorted(SUPPORTED_TYPES))}",
            reason="UNSUPPORTED_TENSOR_TYPE",
            metadata={"tensor_type": unsupported[0], "tensor": example},
        )
    try:
        loaded = mx.load(str(source), return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise FailedPrecondition(
            f"{source.name} could not be read: {exc}",
            reason="GGUF_INVALID",
            metadata={"file": source.name},
        ) from exc
    tensors, meta = cast("tuple[dict[str, mx.array], dict[str, Any]]", loaded)
    return dict(tensors), dict(meta)


def _source_facts(source: Path, float32: bool) -> dict[str, Any]:
    stat = source.stat()
    return {
        "path": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "importer_version": IMPORTER_VERSION,
        "float32": float32,
    }


def _marker(source: Path, result: ImportResult) -> dict[str, Any]:
    return {
        "source": _source_facts(source, result.float32),
        "tensors": result.tensors,
        "quantization": result.quantization,
        "tokens_checked": result.tokens_checked,
        "seconds": round(result.seconds, 3),
    }


def _replace(staging: Path, destination: Path) -> None:
    """Move ``staging`` to ``destination``, replacing an older import as late as possible."""
    if destination.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
        os.replace(destination, retired / destination.name)
        os.replace(staging, destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, destination)
