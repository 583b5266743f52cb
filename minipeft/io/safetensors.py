"""minipeft's own reader and writer for the safetensors format.

A file is: an unsigned little-endian 64-bit header length N, N bytes of JSON, then raw tensor bytes.
The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
to the end of the header) and may hold "__metadata__", a str -> str map. Every field is checked
before anything is allocated, so a damaged or hostile file ends in one clear MiniPeftError.
"""

import json
import math
import os
import struct

import torch

from .atomic import atomic_write
from ..errors import MiniPeftError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's cap as well


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise MiniPeftError(f"duplicate tensor name {key!r} in the header")
        out[key] = value
    return out


def read_header(f, path):
    """Read and validate the header of an open file; returns (entries, metadata, data_start)."""
    file_size = os.fstat(f.fileno()).st_size
    raw = f.read(8)
    if len(raw) < 8:
        raise MiniPeftError(f"{path}: not a safetensors file (only {file_size} bytes, need an 8-byte header length)")
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_HEADER_BYTES:
        raise MiniPeftError(f"{path}: header length {n} is over the {MAX_HEADER_BYTES}-byte cap; the file is damaged or not safetensors")
    if 8 + n > file_size:
        raise MiniPeftError(f"{path}: header length {n} runs past the end of the file ({file_size} bytes); the file is truncated or damaged")
    try:
        header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except MiniPeftError as e:
        raise MiniPeftError(f"{path}: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MiniPeftError(f"{path}: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise MiniPeftError(f"{path}: the header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise MiniPeftError(f"{path}: __metadata__ must map strings to strings")
    data_size = file_size - 8 - n
    spans = []
    for name, entry in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise MiniPeftError(f"{where}: entry must have exactly dtype, shape and data_offsets, got {entry!r}"[:300])
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise MiniPeftError(f"{where}: unknown dtype {dtype!r}; minipeft reads {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise MiniPeftError(f"{where}: shape must be a list of non-negative integers, got {shape!r}"[:300])
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise MiniPeftError(f"{where}: data_offsets {offsets!r} out of range for {data_size} data bytes"[:300])
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != expected:
            raise MiniPeftError(f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes but shape {shape} of {dtype} needs {expected}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (b0, e0, a), (b1, e1, b) in zip(spans, spans[1:]):
        if b1 < e0:
            raise MiniPeftError(f"{path}: tensors {a!r} and {b!r} overlap (bytes {b0}-{e0} and {b1}-{e1})")
    return header, metadata, 8 + n


def load(path):
    """Read a safetensors file; returns (tensors: dict name -> CPU tensor, metadata: dict)."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise MiniPeftError(f"cannot open {path}: {e.strerror}") from None
    with f:
        header, metadata, data_start = read_header(f, path)
        tensors = {}
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            f.seek(data_start + begin)
            buf = bytearray(f.read(end - begin))  # one tensor at a time: peak memory ~ file size
            dtype = DTYPES[entry["dtype"]]
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            tensors[name] = t.reshape(entry["shape"])
    return tensors, metadata


def save(path, tensors, metadata=None):
    """Write `tensors` (name -> tensor) to `path` atomically, names sorted, header padded to 8 bytes."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.dtype not in DTYPE_NAMES:
            raise MiniPeftError(f"cannot save tensor {name!r}: dtype {t.dtype} is not one of {sorted(DTYPES)}")
        data = t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in blobs:
            f.write(data)
