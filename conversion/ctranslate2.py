"""A reader for CTranslate2 ``model.bin`` files, written from the format itself (no ctranslate2 package).

The layout this reader relies on (binary version 6, little endian, as ``ctranslate2.specs.ModelSpec``
writes it; ``str`` is a u16 byte count that includes a trailing NUL, then the UTF-8 bytes and the NUL)::

    u32  binary version (6)
    str  spec name (e.g. "WhisperSpec")
    u32  spec revision
    u32  number of variables, then for each:
         str  name (e.g. "encoder/layer_0/ffn/linear_0/weight")
         u8   rank, then rank x u32 dimensions
         u8   dtype id: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
         u32  byte count, then the bytes (row major)
    u32  number of aliases, then for each: str alias, str name of the variable it stands for

A checkpoint may be cut into parts (``model.bin.part1``, ``model.bin.part2``, ...) whose bytes, joined
in part order, are one ``model.bin``; :func:`read_model_bin` reads them as one stream, so the parts are
never joined on disk. Every failure names the file and what was expected there.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

SUPPORTED_BINARY_VERSION = 6
_DTYPES: dict[int, tuple[str, torch.dtype]] = {
    0: ("float32", torch.float32),
    1: ("int8", torch.int8),
    2: ("int16", torch.int16),
    3: ("int32", torch.int32),
    4: ("float16", torch.float16),
    5: ("bfloat16", torch.bfloat16),
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_PART = re.compile(r"^model\.bin\.part(\d+)$")


class CheckpointError(ValueError):
    """A file that is not the CTranslate2 checkpoint it was taken for; the message names it."""


@dataclass(frozen=True)
class Checkpoint:
    """The variables of a CTranslate2 model, with aliases resolved, and the SHA-256 of its bytes."""

    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    sha256: str
    files: tuple[Path, ...]

    def get(self, name: str) -> torch.Tensor:
        try:
            return self.variables[name]
        except KeyError:
            raise CheckpointError(f"{self.files[0]}: variable {name!r} is missing from the {self.spec}") from None

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(-1)[0])


def model_files(folders: Sequence[Path]) -> list[Path]:
    """``model.bin`` in one of the folders, or every ``model.bin.partN`` across them, in part order."""
    whole = [folder / "model.bin" for folder in folders if (folder / "model.bin").is_file()]
    parts: dict[int, Path] = {}
    for folder in folders:
        for path in folder.iterdir() if folder.is_dir() else ():
            match = _PART.match(path.name)
            if match:
                number = int(match.group(1))
                if number in parts:
                    raise CheckpointError(f"part {number} appears twice: {parts[number]} and {path}")
                parts[number] = path
    if whole and parts:
        raise CheckpointError(f"both {whole[0]} and parts ({sorted(parts.values())[0]}, ...): give one checkpoint")
    if len(whole) > 1:
        raise CheckpointError(f"more than one model.bin: {whole[0]} and {whole[1]}")
    if whole:
        return whole
    if not parts:
        listed = ", ".join(str(folder) for folder in folders)
        raise CheckpointError(f"no CTranslate2 model.bin (or model.bin.part1, ...) in {listed}")
    expected = list(range(1, max(parts) + 1))
    missing = [number for number in expected if number not in parts]
    if missing:
        raise CheckpointError(
            f"checkpoint parts {missing} are missing (found {sorted(parts)}) beside {parts[max(parts)]}"
        )
    return [parts[number] for number in expected]


class _Stream:
    """The files, read as one byte stream, hashed as they are read."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)
        self._index = 0
        self._handle: BinaryIO = self.files[0].open("rb")
        self.digest = hashlib.sha256()

    def close(self) -> None:
        self._handle.close()

    def read(self, size: int, what: str) -> bytes:
        chunks, wanted = [], size
        while wanted:
            chunk = self._handle.read(wanted)
            if not chunk:
                if self._index + 1 >= len(self.files):
                    raise CheckpointError(
                        f"{self.files[-1]} is truncated: it ends inside {what} ({size - wanted} of {size} bytes read)"
                    )
                self._handle.close()
                self._index += 1
                self._handle = self.files[self._index].open("rb")
                continue
            chunks.append(chunk)
            wanted -= len(chunk)
        data = b"".join(chunks)
        self.digest.update(data)
        return data

    def u8(self, what: str) -> int:
        return int(self.read(1, what)[0])

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.read(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.read(4, what))[0])

    def string(self, what: str) -> str:
        raw = self.read(self.u16(what), what)
        if not raw.endswith(b"\0"):
            raise CheckpointError(f"{self.files[self._index]}: {what} is not a NUL-terminated string")
        try:
            return raw[:-1].decode()
        except UnicodeDecodeError as error:
            raise CheckpointError(f"{self.files[self._index]}: {what} is not UTF-8 text") from error

    def at_end(self) -> bool:
        return self._index == len(self.files) - 1 and not self._handle.peek(1)  # type: ignore[attr-defined]


def read_model_bin(files: Sequence[Path]) -> Checkpoint:
    """Every variable of the checkpoint as a tensor in its stored dtype (float16 stays float16)."""
    stream = _Stream(files)
    try:
        version = stream.u32("the binary version")
        if version != SUPPORTED_BINARY_VERSION:
            raise CheckpointError(
                f"{files[0]}: binary version {version}; this reader knows version {SUPPORTED_BINARY_VERSION} "
                "(not a CTranslate2 model.bin, or one from an unsupported release)"
            )
        spec = stream.string("the spec name")
        revision = stream.u32("the spec revision")
        variables: dict[str, torch.Tensor] = {}
        for index in range(stream.u32("the variable count")):
            name = stream.string(f"the name of variable {index}")
            shape = [stream.u32(f"a dimension of {name}") for _ in range(stream.u8(f"the rank of {name}"))]
            dtype_id = stream.u8(f"the dtype of {name}")
            if dtype_id not in _DTYPES:
                raise CheckpointError(
                    f"{files[0]}: variable {name!r} has dtype id {dtype_id}; known ids: "
                    + ", ".join(f"{key} {label}" for key, (label, _) in _DTYPES.items())
                )
            dtype = _DTYPES[dtype_id][1]
            size = stream.u32(f"the byte count of {name}")
            expected = int(np.prod(shape, dtype=np.int64)) * torch.tensor([], dtype=dtype).element_size()
            if size != expected:
                raise CheckpointError(
                    f"{files[0]}: variable {name!r} holds {size} bytes; shape {shape} needs {expected}"
                )
            data = bytearray(stream.read(size, f"the values of {name}"))
            variables[name] = (
                torch.frombuffer(data, dtype=dtype).reshape(shape) if size else torch.zeros(shape, dtype=dtype)
            )
        for _ in range(stream.u32("the alias count")):
            alias = stream.string("an alias name")
            target = stream.string(f"the variable alias {alias!r} stands for")
            if target not in variables:
                raise CheckpointError(f"{files[0]}: alias {alias!r} names a missing variable {target!r}")
            variables[alias] = variables[target]
        if not stream.at_end():
            raise CheckpointError(f"{files[-1]}: unexpected bytes after the aliases (a damaged or foreign file)")
        return Checkpoint(spec, revision, variables, stream.digest.hexdigest(), tuple(files))
    finally:
        stream.close()


def write_model_bin(
    path: Path, spec: str, revision: int, variables: dict[str, torch.Tensor], aliases: dict[str, str]
) -> None:
    """Write the layout above; the tests build their own small checkpoints with it."""
    ids = {dtype: key for key, (_, dtype) in _DTYPES.items()}

    def string(value: str) -> bytes:
        raw = value.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    with path.open("wb") as out:
        out.write(struct.pack("<I", SUPPORTED_BINARY_VERSION) + string(spec) + struct.pack("<I", revision))
        out.write(struct.pack("<I", len(variables)))
        for name, tensor in variables.items():
            data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
            out.write(string(name) + struct.pack("<B", tensor.dim()))
            out.write(b"".join(struct.pack("<I", dim) for dim in tensor.shape))
            out.write(struct.pack("<BI", ids[tensor.dtype], len(data)) + data)
        out.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            out.write(string(alias) + string(target))
