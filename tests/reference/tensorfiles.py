"""safetensors and .npy files in pure Python (no numpy), for the tests that
run under the CI's plain python3: raw tensors out of a safetensors file,
F32 tensors in and out, and float32 .npy results of gpuhost-sd.
"""

import json
import struct


def st_read(path):
    """-> {name: (header entry, raw bytes)} (without __metadata__)."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    head = json.loads(data[8:8 + n])
    return {k: (v, data[8 + n + v["data_offsets"][0]:8 + n +
                           v["data_offsets"][1]])
            for k, v in head.items() if k != "__metadata__"}


def st_floats(path, name):
    """An F32 tensor's values, flat."""
    meta, blob = st_read(path)[name]
    if meta["dtype"] != "F32":
        raise ValueError("%s: %s is %s, not F32" % (path, name,
                                                      meta["dtype"]))
    return list(struct.unpack("<%df" % (len(blob) // 4), blob))


def st_write(path, tensors):
    """Writes {name: (header entry without data_offsets, raw bytes)}."""
    head, blobs, off = {}, [], 0
    for k in sorted(tensors):
        meta, blob = tensors[k]
        head[k] = {"dtype": meta["dtype"], "shape": meta["shape"],
                   "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    hj = json.dumps(head).encode()
    hj += b" " * (-len(hj) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def st_write_f32(path, name, shape, values):
    """One F32 tensor."""
    st_write(path, {name: ({"dtype": "F32", "shape": shape},
                           struct.pack("<%df" % len(values), *values))})


def npy_floats(path):
    """A float32 .npy file's values, flat (the header is skipped)."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<H", data[8:10])[0]
    body = data[10 + n:]
    return list(struct.unpack("<%df" % (len(body) // 4), body))
