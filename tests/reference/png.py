"""Minimal PNG reading and writing in pure Python (zlib only), for 8-bit
RGB and RGBA images without interlacing: what gpuhost writes and what the
demo tests and tools need. Pixels are bytes, row-major, 3 per pixel.
"""

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + \
        struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write(path, width, height, rgb, texts=None):
    """Writes `rgb` (bytes, width * height * 3) as an RGB8 PNG, with
    optional tEXt chunks {keyword: Latin-1 text}."""
    if len(rgb) != width * height * 3:
        raise ValueError("pixel data does not match the size")
    raw = bytearray()
    stride = width * 3
    for y in range(height):
        raw.append(0)
        raw += rgb[y * stride:(y + 1) * stride]
    out = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                  8, 2, 0, 0, 0))
    for k, v in (texts or {}).items():
        out += _chunk(b"tEXt", k.encode("latin-1") + b"\0" +
                      v.encode("latin-1"))
    out += _chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + _chunk(b"IEND",
                                                                   b"")
    with open(path, "wb") as f:
        f.write(out)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(data, width, height, bpp):
    stride = width * bpp
    out = bytearray(stride * height)
    prev = bytearray(stride)
    pos = 0
    for y in range(height):
        ftype = data[pos]
        line = bytearray(data[pos + 1:pos + 1 + stride])
        pos += 1 + stride
        if len(line) != stride:
            raise ValueError("truncated image data")
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 255
            elif ftype == 4:
                line[i] = (line[i] + _paeth(a, b, c)) & 255
            elif ftype != 0:
                raise ValueError(f"bad filter type {ftype}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return out


def read(path):
    """-> (width, height, rgb bytes, {tEXt/iTXt keyword: text}). RGBA is
    returned without its alpha."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != SIGNATURE:
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, texts, hdr = 8, bytearray(), {}, None
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"tEXt":
            k, _, v = body.partition(b"\0")
            texts[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"iTXt":  # keyword, flag, method, language, key, text
            k, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            text = rest.split(b"\0", 2)[2]
            texts[k.decode("latin-1")] = (zlib.decompress(text) if compressed
                                          else text).decode("utf-8")
        elif kind == b"IEND":
            break
    if hdr is None:
        raise ValueError(f"{path}: no IHDR")
    width, height, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise ValueError(f"{path}: only 8-bit RGB/RGBA without interlace")
    bpp = 3 if ctype == 2 else 4
    px = _unfilter(zlib.decompress(bytes(idat)), width, height, bpp)
    if bpp == 4:
        px = bytearray(b for i, b in enumerate(px) if i % 4 != 3)
    return width, height, bytes(px), texts
