#!/usr/bin/env python3
"""Tests of the demo model's judge, semantic.py (stdlib only, no model).

- Pictures drawn here in pure Python with the generator's own shape test
  (shapes.inside, 4x4 samples a pixel) are judged right for their own caption, and wrong for a caption
  with another colour, background or shape.
- A picture with no shape, or of another size, is handled (no crash; not ok).
- parse_caption accepts the grammar's captions and refuses malformed ones
  with ValueError, and nothing else: a list of known bad captions, then
  20,000 random mutations of good ones (a small fuzz run, seeded).
"""

import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.dont_write_bytecode = True
import semantic  # noqa: E402
import shapes  # noqa: E402


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def draw(kind, fg, bg, r=12.0, cx=32.0, cy=32.0, size=64):
    """RGB bytes of one anti-aliased shape (4x4 samples per pixel)."""
    out = bytearray()
    for py in range(size):
        for px in range(size):
            hits = sum(shapes.inside(kind, px + (i + 0.5) / 4 - cx,
                              py + (j + 0.5) / 4 - cy, r)
                       for i in range(4) for j in range(4))
            a = hits / 16
            out += bytes(int(b * (1 - a) + f * a + 0.5)
                         for f, b in zip(fg, bg))
    return bytes(out)


def check_pictures():
    c = shapes.COLOURS
    cases = [("circle", "red", "blue"), ("square", "green", "white"),
             ("triangle", "yellow", "purple"), ("star", "white", "black"),
             ("ring", "orange", "blue"), ("cross", "blue", "yellow")]
    for shape, fg, bg in cases:
        rgb = draw(shape, c[fg], c[bg])
        art = "an" if fg[0] in "aeiou" else "a"
        good = f"{art} {fg} {shape} on a {bg} background"
        j = semantic.judge(good, 64, 64, rgb)
        if not j["ok"]:
            fail(f"{good}: judged {j['predicted']}")
        other = "circle" if shape != "circle" else "square"
        for bad in (f"{art} {fg} {other} on a {bg} background",
                    f"a black {shape} on a {bg} background" if fg != "black"
                    else f"a red {shape} on a {bg} background",
                    f"{art} {fg} {shape} on a red background" if bg != "red"
                    else f"{art} {fg} {shape} on a green background"):
            if semantic.judge(bad, 64, 64, rgb)["ok"]:
                fail(f"a picture of '{good}' passed as '{bad}'")
        print(f"ok: {good}; wrong captions refused", flush=True)
    blank = bytes(c["blue"]) * (64 * 64)
    j = semantic.judge("a red circle on a blue background", 64, 64, blank)
    if j["ok"] or j["predicted"]["shape"] is not None:
        fail("a plain picture passed, or has a shape")
    wide = draw("circle", c["red"], c["blue"], r=20, cx=64, cy=24, size=48)
    wide = b"".join(wide[y * 48 * 3:(y + 1) * 48 * 3] * 2 for y in range(48))
    semantic.analyse(96, 48, wide)  # another size: no crash
    print("ok: a plain picture, another size", flush=True)


BAD = [
    "", " ", ",", "a", "background", "a red circle", "red circle on blue",
    "a red circle on a blue", "a red hexagon on a blue background",
    "a red circle on a teal background", "a orange circle on a blue background",
    "an red circle on a blue background", "a red circle on an blue background",
    "a huge red circle on a blue background",
    "a red circle on a blue background, middle",
    "a red circle on a blue background, top left, top",
    "a red circle on a blue and background",
    "a red circle on a blue and green and white background",
    "a red red circle on a blue background",
    "a red circle in a blue background",
    "a red circle on a blue background" * 3,
    "a r\u00e9d circle on a blue background", "a red circle on a blue background\0",
]


def check_parser():
    for cap in shapes.vocabulary_corpus():
        semantic.parse_caption(cap)
    for cap in BAD:
        try:
            semantic.parse_caption(cap)
        except ValueError:
            continue
        fail(f"parse_caption accepted {cap!r}")
    rnd = random.Random(1234)
    good = shapes.vocabulary_corpus()
    alphabet = "abcdefghijklmnopqrstuvwxyz ,\t\u00e9\0"
    accepted = 0
    for _ in range(20000):
        s = list(rnd.choice(good))
        for _ in range(rnd.randint(1, 4)):
            op = rnd.randrange(3)
            pos = rnd.randrange(len(s) + 1)
            if op == 0:
                s.insert(pos, rnd.choice(alphabet))
            elif op == 1 and s:
                del s[min(pos, len(s) - 1)]
            elif s:
                s[min(pos, len(s) - 1)] = rnd.choice(alphabet)
        text = "".join(s)
        try:
            got = semantic.parse_caption(text)
        except ValueError:
            continue
        except Exception as e:  # anything else is a bug
            fail(f"parse_caption({text!r}) raised {e!r}")
        accepted += 1
        if got["shape"] not in shapes.SHAPES or \
                got["colour"] not in shapes.COLOURS:
            fail(f"parse_caption({text!r}) gave {got}")
    print(f"ok: parser: {len(BAD)} bad captions refused; 20000 mutations, "
          f"{accepted} still in the grammar, no other exception", flush=True)


if __name__ == "__main__":
    check_parser()
    check_pictures()
    print("PASS")
