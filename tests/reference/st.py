"""A minimal safetensors reader and writer (no dependency on `safetensors`).

File layout: an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}}` plus an optional
`"__metadata__": {str: str}`), padded with spaces to a multiple of 8, then
the tensor data. This writer lays the tensors out in sorted name order with
no gaps, `__metadata__` first in the JSON.

Tensors are NumPy arrays. BF16 has no NumPy type: it is written from a float
array (rounded to nearest even) and read back as float32.
"""

import json
import struct

import numpy as np

# safetensors dtype name -> (NumPy storage type, bytes per element)
DTYPES = {
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (np.uint16, 2),
    "I32": (np.int32, 4),
    "I64": (np.int64, 8),
    "U8": (np.uint8, 1),
}


def f32_to_bf16_bits(a):
    """float32 values -> bf16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    u = u.astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(b):
    """bf16 bit patterns (uint16) -> float32 values (exact)."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(
        np.float32)


def round_to_bf16(a):
    """Round float values to the nearest bf16 value, returned as float32."""
    return bf16_bits_to_f32(f32_to_bf16_bits(a))


def _encode(dtype, arr, exact):
    """Array -> little-endian bytes of `dtype`. With `exact`, refuse values
    that the conversion would change."""
    arr = np.asarray(arr)
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    if dtype == "BF16":
        src = arr.astype(np.float32)
        data = f32_to_bf16_bits(src)
        back = bf16_bits_to_f32(data)
    else:
        npt = DTYPES[dtype][0]
        data = arr.astype(npt)
        back = data
    if exact and not np.array_equal(np.asarray(back, dtype=np.float64),
                                    np.asarray(arr, dtype=np.float64)):
        raise ValueError(f"values not exactly representable as {dtype}")
    return np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"),
                                             copy=False).tobytes()


def save(path, tensors, metadata=None, exact=True):
    """Write `tensors` ({name: (dtype, array)}) to a safetensors file.

    `metadata` is an optional {str: str}. With `exact` (the default) every
    value must survive the conversion to its dtype unchanged.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("reserved tensor name")
        dtype, arr = tensors[name]
        data = _encode(dtype, arr, exact)
        header[name] = {
            "dtype": dtype,
            "shape": [int(d) for d in np.shape(arr)],
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def load(path):
    """Read a safetensors file -> ({name: np.ndarray}, metadata, dtypes).

    BF16 tensors come back as float32; `dtypes` maps names to the stored
    dtype names. The header is checked: offsets inside the data and matching
    the shapes, no overlaps.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("file too short")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError("header length past the end of the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n:]
    metadata = header.pop("__metadata__", None)
    out, dtypes, spans = {}, {}, []
    for name, info in header.items():
        dtype = info["dtype"]
        npt, size = DTYPES[dtype]
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(data) or end - begin != count * size:
            raise ValueError(f"bad data_offsets for {name}")
        spans.append((begin, end))
        arr = np.frombuffer(data[begin:end], dtype=np.dtype(npt).newbyteorder(
            "<")).reshape(shape).astype(npt)
        if dtype == "BF16":
            arr = bf16_bits_to_f32(arr)
        out[name] = arr
        dtypes[name] = dtype
    spans.sort()
    for (b0, e0), (b1, _) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError("overlapping tensors")
    return out, metadata, dtypes
