#!/usr/bin/env python3
"""Judges a 64x64 RGB image of the demo dataset against its caption, in pure
Python (no numpy, no torch), with classical image analysis.

The demo model is trained on tests/reference/shapes.py: one shape of one
colour on a plain or two-tone background. This module checks whether a
generated image shows what its caption asks for:

  1. Background. The median colour of the 2-pixel image border, taken
     separately over the top half and the bottom half; the two differ for a
     two-tone background ("a ... on a red and blue background").
  2. Foreground mask. A first pass marks the pixels far (RGB distance) from
     the local background colour and keeps the largest 4-connected region.
     The foreground colour is the median of the quarter of that region
     farthest from the background colours and their blends: its core, as
     if eroded, and on a blurred thin shape the pixels least mixed with
     the background. A second pass
     assigns every pixel to the nearer of foreground and local background
     colour (the 50 % coverage contour of an anti-aliased or slightly
     blurred edge) and again keeps the largest 4-connected region, which
     drops speckles.
  3. Colour names, by a fixed rule on HSV: dark is black, unsaturated is
     white, anything else is the chromatic colour of COLOURS with the
     nearest hue.
  4. Shape features of the mask: area, bounding box, fill ratio (area over
     bounding-box area), up-down and left-right mirror symmetry (IoU of the
     mask with its mirror image about the box centre), the share of
     background in the 3x3 pixels at the box centre (a ring's hole), the
     share of the box's corners covered, the share of the bottom quarter
     of the box covered (bottom_fill), aspect ratio, centroid.
  5. Shape class, by a small decision rule on those features whose
     thresholds tests/demo/calibrate.py chose on ground-truth renders and
     wrote to tests/demo/thresholds.json:

        centre_bg >= hole_centre_bg          -> ring
        up-down symmetry < ud_sym_pointed    -> pointed up:
            bottom_fill >= bottom_triangle   -> triangle
            else                             -> star
        corners >= corners_square            -> square
        fill >= fill_circle                  -> circle
        else                                 -> cross

Size (from the box width, per shape) and place (from the centroid) are
estimated and reported too, but `ok` covers only foreground colour,
background colour(s) and shape.

    python3 tests/demo/semantic.py "a red star on a blue background" x.png

prints the judgement as JSON and exits 0 when it is ok, else 1 (2 when the
caption is outside the grammar or the image cannot be read).
"""

import colorsys
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

import png  # noqa: E402
import shapes  # noqa: E402  (its tables import without torch)

THRESHOLDS_PATH = os.path.join(HERE, "thresholds.json")

BORDER = 2            # border width (pixels) sampled for the background
FIRST_PASS_DIST = 40  # RGB distance from the background: first-pass mask
TWO_TONE_DIST = 45    # RGB distance between top and bottom: two-tone
SEAM_BAND = 4         # rows each side of the middle where any blend of
                      # two background tones (a blurred seam) counts as
                      # the local background

# Colour naming rule (HSV, all in 0..1): value below BLACK_V is black;
# otherwise saturation below GREY_S is grey, named white from WHITE_V up
# and black below; otherwise the chromatic prototype with the nearest hue.
BLACK_V = 0.30
GREY_S = 0.35
WHITE_V = 0.55


# --------------------------------------------------------------- captions

def _article(words, i, orig):
    """Checks that words[i] is the article the next word takes ("an"
    before a vowel, as shapes.caption writes it)."""
    want = "an" if i + 1 < len(words) and words[i + 1][:1] in "aeiou" \
        else "a"
    if words[i] != want:
        raise ValueError(f"expected {want!r} at word {i + 1} of {orig!r}")


def parse_caption(text):
    """Caption -> {shape, colour, bg, bg2 (None if plain), size ('' | small
    | large), place}; place is "center" when the caption names none.
    Raises ValueError for text outside the grammar of shapes.py (which
    includes "an" before a vowel)."""
    orig = text
    text = " ".join(text.strip().split())
    place = "center"
    if "," in text:
        text, _, tail = text.partition(",")
        place = tail.strip()
        if place not in shapes.PLACES:
            raise ValueError(f"unknown place {place!r} in {orig!r}")
    words = text.split(" ")
    if len(words) < 7 or words[-1] != "background":
        raise ValueError(f"not 'a ... on a ... background': {orig!r}")
    _article(words, 0, orig)
    try:
        on = words.index("on")
    except ValueError:
        raise ValueError(f"no 'on' in {orig!r}") from None
    subject, rest = words[1:on], words[on + 1:-1]
    size = ""
    if subject and subject[0] in ("small", "large"):
        size, subject = subject[0], subject[1:]
    if len(subject) != 2 or subject[0] not in shapes.COLOURS \
            or subject[1] not in shapes.SHAPES:
        raise ValueError(f"expected '[SIZE ]COLOUR SHAPE' in {orig!r}")
    colour, shape = subject
    _article(words, on + 1, orig)
    rest = rest[1:]
    if len(rest) == 1:
        bg, bg2 = rest[0], None
    elif len(rest) == 3 and rest[1] == "and":
        bg, bg2 = rest[0], rest[2]
    else:
        raise ValueError(f"expected 'BG' or 'BG1 and BG2' in {orig!r}")
    for c in (bg, bg2):
        if c is not None and c not in shapes.COLOURS:
            raise ValueError(f"unknown colour {c!r} in {orig!r}")
    return {"shape": shape, "colour": colour, "bg": bg, "bg2": bg2,
            "size": size, "place": place}


# ----------------------------------------------------------------- colour

def _median3(pixels):
    """Per-channel median of a list of (r, g, b)."""
    n = len(pixels)
    return tuple(sorted(p[c] for p in pixels)[n // 2] for c in range(3))


def _dist2(a, b):
    return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2


def _seg_dist2(p, a, b):
    """Squared distance of colour p from the segment a..b (the blends of a
    and b that a blurred seam between them produces)."""
    d = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    dd = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    if dd == 0:
        return _dist2(p, a)
    t = ((p[0] - a[0]) * d[0] + (p[1] - a[1]) * d[1]
         + (p[2] - a[2]) * d[2]) / dd
    t = min(1.0, max(0.0, t))
    return _dist2(p, (a[0] + t * d[0], a[1] + t * d[1], a[2] + t * d[2]))


def _hue_deg(rgb):
    h, _, _ = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    return h * 360.0


CHROMATIC = {name: _hue_deg(rgb) for name, rgb in shapes.COLOURS.items()
             if name not in ("white", "black")}


def colour_name(rgb):
    """Name of an RGB colour (0..255) among shapes.COLOURS, by the HSV rule
    in the module docstring."""
    _, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    if v < BLACK_V:
        return "black"
    if s < GREY_S:
        return "white" if v >= WHITE_V else "black"
    h = _hue_deg(rgb)

    def hue_gap(name):
        d = abs(h - CHROMATIC[name]) % 360.0
        return min(d, 360.0 - d)
    return min(CHROMATIC, key=hue_gap)


# ------------------------------------------------------------------ masks

def _largest_component(mask, w, h):
    """The largest 4-connected region of a flat boolean mask, as a new
    mask."""
    seen = bytearray(w * h)
    best = []
    for start in range(w * h):
        if not mask[start] or seen[start]:
            continue
        seen[start] = 1
        comp, stack = [], [start]
        while stack:
            i = stack.pop()
            comp.append(i)
            x = i % w
            for j, ok in ((i - 1, x > 0), (i + 1, x < w - 1),
                          (i - w, i >= w), (i + w, i < w * (h - 1))):
                if ok and mask[j] and not seen[j]:
                    seen[j] = 1
                    stack.append(j)
        if len(comp) > len(best):
            best = comp
    out = bytearray(w * h)
    for i in best:
        out[i] = 1
    return out


def _purest(mask, px, top, bottom):
    """The quarter (at least 4) of the mask's pixels farthest from every
    blend of the background colours (the segment top..bottom): the shape's
    interior, and on a blurred thin shape the pixels least mixed with the
    background. (A blend of the foreground with the background colours is
    never farther from that segment than the foreground colour itself,
    however the two tones compare.)"""
    idx = sorted((i for i, m in enumerate(mask) if m),
                 key=lambda i: _seg_dist2(px[i], top, bottom), reverse=True)
    return [px[i] for i in idx[:max(4, len(idx) // 4)]]


def _background(px, w, h):
    """Median colour of the border, top half and bottom half."""
    top, bottom = [], []
    for y in range(h):
        xs = range(w) if y < BORDER or y >= h - BORDER else \
            list(range(BORDER)) + list(range(w - BORDER, w))
        half = top if y < h // 2 else bottom
        half.extend(px[y * w + x] for x in xs)
    return _median3(top), _median3(bottom)


def _bg_dist2_fn(w, h, top, bottom, two_tone):
    """-> f(pixel index, colour): squared distance from the local
    background (the blend segment near the seam of a two-tone one)."""
    mid = h // 2

    def f(i, p):
        if not two_tone:
            return _dist2(p, top)
        y = i // w
        if mid - SEAM_BAND <= y < mid + SEAM_BAND:
            return _seg_dist2(p, top, bottom)
        return _dist2(p, top if y < mid else bottom)
    return f


# --------------------------------------------------------------- features

def shape_features(mask, w, h):
    """Features of a non-empty flat mask (see the module docstring)."""
    xs = [i % w for i in range(w * h) if mask[i]]
    ys = [i // w for i in range(w * h) if mask[i]]
    area = len(xs)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1

    def iou_mirror(flip_x, flip_y):
        inter = 0
        for x, y in zip(xs, ys):
            mx = x0 + x1 - x if flip_x else x
            my = y0 + y1 - y if flip_y else y
            inter += mask[my * w + mx]
        return inter / (2 * area - inter)

    # 3x3 around the box centre; a centre between two pixels rounds down
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    centre = [mask[yy * w + xx]
              for yy in range(cy - 1, cy + 2) for xx in range(cx - 1, cx + 2)
              if 0 <= xx < w and 0 <= yy < h]
    centre_bg = 1.0 - sum(centre) / len(centre)

    # corners: the four boxes of a quarter of the width and height
    qw, qh = max(1, bw // 4), max(1, bh // 4)
    corner_px = corner_in = 0
    for yy in list(range(y0, y0 + qh)) + list(range(y1 - qh + 1, y1 + 1)):
        for xx in list(range(x0, x0 + qw)) + list(range(x1 - qw + 1, x1 + 1)):
            corner_px += 1
            corner_in += mask[yy * w + xx]

    # bottom quarter of the box: a triangle's base fills it, a star's two
    # feet leave most of it empty
    bottom_in = sum(mask[yy * w + xx] for yy in range(y1 - qh + 1, y1 + 1)
                    for xx in range(x0, x1 + 1))

    mx, my = sum(xs) / area, sum(ys) / area
    return {
        "area": area,
        "bbox": [x0, y0, x1, y1],
        "fill": area / (bw * bh),
        "ud_sym": iou_mirror(False, True),
        "lr_sym": iou_mirror(True, False),
        "centre_bg": centre_bg,
        "corners": corner_in / corner_px,
        "bottom_fill": bottom_in / (qh * bw),
        "aspect": bw / bh,
        "centroid": [mx + 0.5, my + 0.5],            # pixel centres at +.5
        "centroid_rel_y": (my - y0 + 0.5) / bh,      # 0 top .. 1 bottom
        "touches_border": x0 == 0 or y0 == 0 or x1 == w - 1 or y1 == h - 1,
    }


def load_thresholds(path=THRESHOLDS_PATH):
    with open(path) as f:
        return json.load(f)["shape"]


def classify(feat, th):
    """Shape class from features, by the rule in the module docstring."""
    if feat["centre_bg"] >= th["hole_centre_bg"]:
        return "ring"
    if feat["ud_sym"] < th["ud_sym_pointed"]:
        return "triangle" if feat["bottom_fill"] >= th["bottom_triangle"] \
            else "star"
    if feat["corners"] >= th["corners_square"]:
        return "square"
    if feat["fill"] >= th["fill_circle"]:
        return "circle"
    return "cross"


# The box width of each shape in units of its radius r (shapes._sdf), and
# the radius cuts between the size words (shapes.SIZES: small 6.5..8.5,
# medium 10.5..12.5, large 15..18).
WIDTH_PER_R = {"circle": 2.0, "square": 1.7, "ring": 2.0, "cross": 1.9,
               "triangle": 1.25 * 3 ** 0.5, "star": 2 * 1.3 * 0.9511}
SIZE_CUTS = (9.5, 13.75)


def estimate_size(feat, shape):
    """Size word and radius estimate from the box width of a shape."""
    x0, _, x1, _ = feat["bbox"]
    r = (x1 - x0 + 1) / WIDTH_PER_R[shape]
    word = "small" if r < SIZE_CUTS[0] else "" if r < SIZE_CUTS[1] else \
        "large"
    return word, r


def estimate_place(feat, r, size=shapes.SIZE):
    """Place word from the centroid: an offset of more than half the reach
    of a placed shape (shapes.sample) along an axis is off-centre."""
    reach = size / 2 - r - shapes.MARGIN
    cut = max(2.0, 0.5 * reach)
    cx, cy = feat["centroid"]
    dx = -1 if cx < size / 2 - cut else 1 if cx > size / 2 + cut else 0
    dy = -1 if cy < size / 2 - cut else 1 if cy > size / 2 + cut else 0
    return next(k for k, v in shapes.PLACES.items() if v == (dx, dy))


# --------------------------------------------------------------- analysis

def analyse(width, height, rgb, thresholds=None):
    """Analyses an RGB8 image (bytes, row-major, 3 per pixel). Returns
    {bg, bg2, two_tone, bg_name, bg2_name, fg, fg_name, features, shape,
    size, radius, place} (bg2 and bg2_name are None for a plain
    background; fg, features and the rest are None when no foreground is
    found). `thresholds` defaults to those of thresholds.json."""
    w, h = width, height
    if len(rgb) != w * h * 3:
        raise ValueError("pixel data does not match the size")
    th = thresholds if thresholds is not None else load_thresholds()
    px = list(zip(rgb[0::3], rgb[1::3], rgb[2::3]))
    top, bottom = _background(px, w, h)
    two_tone = _dist2(top, bottom) > TWO_TONE_DIST ** 2
    bg_d2 = _bg_dist2_fn(w, h, top, bottom, two_tone)
    dbg = [bg_d2(i, p) for i, p in enumerate(px)]

    out = {"bg": list(top), "bg2": list(bottom) if two_tone else None,
           "two_tone": two_tone, "bg_name": colour_name(top),
           "bg2_name": colour_name(bottom) if two_tone else None,
           "fg": None, "fg_name": None, "features": None, "shape": None,
           "size": None, "radius": None, "place": None}

    # pass 1: far from the background -> foreground colour
    t2 = FIRST_PASS_DIST ** 2
    mask = _largest_component([d > t2 for d in dbg], w, h)
    if not any(mask):
        return out
    fg = _median3(_purest(mask, px, top, bottom))

    # pass 2: nearer to the foreground colour than to the background
    mask = _largest_component(
        [_dist2(p, fg) < d for p, d in zip(px, dbg)], w, h)
    if not any(mask):
        return out
    feat = shape_features(mask, w, h)
    out.update(fg=list(fg), fg_name=colour_name(fg), features=feat)
    out.update(describe(feat, th, w))
    return out


def describe(feat, th, size=shapes.SIZE):
    """-> {shape, size, radius, place} predicted from the features."""
    shape = classify(feat, th)
    word, r = estimate_size(feat, shape)
    return {"shape": shape, "size": word, "radius": r,
            "place": estimate_place(feat, r, size)}


def judge(caption, width, height, rgb, thresholds=None):
    """Judges an image against its caption. -> {ok, ok_fg, ok_bg,
    ok_shape, ok_size, ok_place, expected, predicted, features}; ok is
    ok_fg and ok_bg and ok_shape (size and place are informative)."""
    want = parse_caption(caption)
    a = analyse(width, height, rgb, thresholds)
    if want["bg2"] is None:
        ok_bg = not a["two_tone"] and a["bg_name"] == want["bg"]
    else:
        ok_bg = a["two_tone"] and a["bg_name"] == want["bg"] \
            and a["bg2_name"] == want["bg2"]
    ok_fg = a["fg_name"] == want["colour"]
    ok_shape = a["shape"] == want["shape"]
    res = {
        "ok": bool(ok_fg and ok_bg and ok_shape),
        "ok_fg": ok_fg, "ok_bg": bool(ok_bg), "ok_shape": ok_shape,
        "ok_size": a.get("size") == want["size"],
        "ok_place": a.get("place") == want["place"],
        "expected": want,
        "predicted": {k: a.get(k) for k in
                      ("shape", "fg_name", "bg_name", "bg2_name", "size",
                       "place", "fg", "bg", "bg2", "two_tone")},
        "features": a["features"],
    }
    return res


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} CAPTION IMAGE.png", file=sys.stderr)
        return 2
    try:
        w, h, rgb, _ = png.read(argv[2])
        res = judge(argv[1], w, h, rgb)
    except (OSError, ValueError) as e:
        print(f"{argv[0]}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
