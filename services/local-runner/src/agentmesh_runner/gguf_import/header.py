"""Reads the tensor table of a GGUF file: names, shapes and ggml types, without the data.

``mlx.core.load`` reads GGUF tensors and metadata, but it quietly turns every tensor type it
cannot keep quantized (Q4_K, Q6_K, IQ…) into float16, so the importer asks this table first
and refuses what it would not keep as it is. The layout (spec: ggml's ``docs/gguf.md``):
magic ``GGUF``, version, tensor count, key/value count, the key/values, then one entry per
tensor. Values are skipped by size; arrays of strings (the vocabulary) are the only slow part.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["GGML_TYPES", "GgufFormatError", "TensorEntry", "read_tensor_table"]

_MAGIC = b"GGUF"

# ggml_type ids (ggml.h) of the types a GGUF may hold; names as llama.cpp prints them.
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip

# Sizes of the fixed-width GGUF value types; 8 is a string, 9 an array.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class GgufFormatError(ValueError):
    """The file is not a GGUF file this reader understands (truncated, corrupt, too new)."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the table; ``shape`` is in ggml order (innermost dimension first)."""

    name: str
    shape: tuple[int, ...]
    type_id: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.type_id, f"type {self.type_id}")


class _Reader:
    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    def take(self, size: int) -> bytes:
        data = self._handle.read(size)
        if len(data) != size:
            raise GgufFormatError("the file ends early (truncated)")
        return data

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack("<Q", self.take(8))[0]
        return value

    def string(self) -> str:
        length = self.u64()
        if length > 1 << 24:
            raise GgufFormatError(f"a string of {length} bytes: the file is corrupt")
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GgufFormatError("a string is not UTF-8: the file is corrupt") from exc

    def skip_value(self, value_type: int) -> None:
        if value_type in _SCALAR_SIZES:
            self._handle.seek(_SCALAR_SIZES[value_type], 1)
        elif value_type == _STRING:
            self._handle.seek(self.u64(), 1)
        elif value_type == _ARRAY:
            item_type, count = self.u32(), self.u64()
            if item_type in _SCALAR_SIZES:
                self._handle.seek(_SCALAR_SIZES[item_type] * count, 1)
            else:
                for _ in range(count):
                    self.skip_value(item_type)
        else:
            raise GgufFormatError(f"unknown value type {value_type}: the file is corrupt")


def read_tensor_table(path: Path) -> list[TensorEntry]:
    """The tensors ``path`` declares (GgufFormatError if it is not a readable GGUF file)."""
    with path.open("rb") as handle:
        reader = _Reader(handle)
        if reader.take(4) != _MAGIC:
            raise GgufFormatError("not a GGUF file (no GGUF magic number)")
        version = reader.u32()
        if version not in (2, 3):
            raise GgufFormatError(f"GGUF version {version} is not supported (2 and 3 are)")
        tensor_count, kv_count = reader.u64(), reader.u64()
        if tensor_count > 1 << 20 or kv_count > 1 << 20:
            raise GgufFormatError("implausible tensor or key counts: the file is corrupt")
        for _ in range(kv_count):
            reader.string()
            reader.skip_value(reader.u32())
        entries = []
        for _ in range(tensor_count):
            name = reader.string()
            dims = reader.u32()
            if dims > 4:
                raise GgufFormatError(f"tensor {name} has {dims} dimensions: the file is corrupt")
            shape = tuple(reader.u64() for _ in range(dims))
            type_id = reader.u32()
            reader.u64()  # offset of the data
            entries.append(TensorEntry(name, shape, type_id))
        return entries
