"""The demo model's procedural dataset: 64x64 RGB images of one simple shape
on a plain or two-tone background, each with its caption.

    a small red circle on a blue background, top left
    a large green star on a white and purple background
    a yellow ring on a black background

Grammar (every caption):  a [SIZE ]COLOUR SHAPE on a BG background[, PLACE]
  ("an" before a vowel)
  SIZE    small | large | (nothing: medium)
  COLOUR  one of COLOURS
  SHAPE   one of SHAPES, upright (triangle and star point up)
  BG      COLOUR, or "COLOUR1 and COLOUR2" (top half, bottom half)
  PLACE   one of PLACES; nothing means center

Rendering is analytic: each pixel's coverage is the fraction of a 4x4 grid
of sample points inside the shape (signed distance functions), so edges are
anti-aliased. Sampling and rendering are deterministic from a seed: the
attributes are drawn from a CPU `torch.Generator`, the pixels are computed
with elementwise ops only (identical on CPU and GPU up to float rounding of
the coverage test, which samples away from edges do not feel).

Used by train_demo.py (training), and by tests/demo/ (calibration of the
semantic checker against the ground truth this module renders).
"""

import math

try:
    import torch
except ImportError:  # the tables alone serve tests/demo/ without torch
    torch = None

SIZE = 64

COLOURS = {  # name -> RGB, 0..255
    "red": (215, 35, 35),
    "orange": (240, 130, 20),
    "yellow": (235, 215, 35),
    "green": (40, 165, 60),
    "blue": (35, 70, 215),
    "purple": (135, 45, 185),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOUR_NAMES = list(COLOURS)

SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]

# Size word -> range of the shape's radius in pixels. The radius is the
# circle's; the other shapes are scaled to a similar visual size.
SIZES = {"small": (6.5, 8.5), "": (10.5, 12.5), "large": (15.0, 18.0)}
SIZE_NAMES = list(SIZES)

PLACES = {  # word -> (dx, dy) in -1..1, y down
    "top left": (-1, -1), "top": (0, -1), "top right": (1, -1),
    "left": (-1, 0), "center": (0, 0), "right": (1, 0),
    "bottom left": (-1, 1), "bottom": (0, 1), "bottom right": (1, 1),
}
PLACE_NAMES = list(PLACES)

TWO_TONE_P = 0.25      # share of two-tone backgrounds
CENTER_SAID_P = 0.5    # share of centred shapes whose caption says "center"
COLOUR_JITTER = 10     # +- per channel, per image
POS_JITTER = 2.0       # +- pixels
MARGIN = 3.0           # pixels between a placed shape and the border


def caption(a):
    """The caption of attribute dict `a` (see sample())."""
    size = a["size"] + " " if a["size"] else ""
    bg = a["bg"] if a["bg2"] is None else f"{a['bg']} and {a['bg2']}"
    first = size + a["colour"]
    art = "an" if first[0] in "aeiou" else "a"
    bg_art = "an" if bg[0] in "aeiou" else "a"
    text = f"{art} {first} {a['shape']} on {bg_art} {bg} background"
    if a["place"] != "center" or a["say_center"]:
        text += ", " + a["place"]
    return text


def _rand(gen, n):
    return torch.rand(n, generator=gen, dtype=torch.float64)


def sample(gen, n):
    """n images' attributes from CPU generator `gen`, vectorised:
    (params [n, 13] float64 for render(), attribute dicts for caption())."""
    nc = len(COLOUR_NAMES)
    shape = torch.randint(len(SHAPES), (n,), generator=gen)
    colour = torch.randint(nc, (n,), generator=gen)
    # background offsets 1..nc-1 from the colour; the second tone takes
    # another offset, so the three differ
    off1 = torch.randint(nc - 1, (n,), generator=gen)
    off2 = (off1 + 1 + torch.randint(nc - 2, (n,), generator=gen)) % (nc - 1)
    bg = (colour + 1 + off1) % nc
    bg2 = (colour + 1 + off2) % nc
    two = _rand(gen, n) < TWO_TONE_P
    size = torch.randint(len(SIZE_NAMES), (n,), generator=gen)
    place = torch.randint(len(PLACE_NAMES), (n,), generator=gen)
    say_center = _rand(gen, n) < CENTER_SAID_P
    lo = torch.tensor([SIZES[s][0] for s in SIZE_NAMES], dtype=torch.float64)
    hi = torch.tensor([SIZES[s][1] for s in SIZE_NAMES], dtype=torch.float64)
    r = lo[size] + (hi[size] - lo[size]) * _rand(gen, n)
    dxy = torch.tensor([PLACES[p] for p in PLACE_NAMES],
                       dtype=torch.float64)[place]
    reach = SIZE / 2 - r - MARGIN
    jit = (2 * _rand(gen, 2 * n).reshape(n, 2) - 1) * POS_JITTER
    cx = SIZE / 2 + dxy[:, 0] * reach + jit[:, 0]
    cy = SIZE / 2 + dxy[:, 1] * reach + jit[:, 1]
    cj = torch.randint(-COLOUR_JITTER, COLOUR_JITTER + 1, (n, 3, 3),
                       generator=gen).to(torch.float64)
    table = torch.tensor([COLOURS[c] for c in COLOUR_NAMES],
                         dtype=torch.float64)
    fg = (table[colour] + cj[:, 0]).clamp(0, 255)
    top = (table[bg] + cj[:, 1]).clamp(0, 255)
    bottom = torch.where(two[:, None], (table[bg2] + cj[:, 2]).clamp(0, 255),
                         top)
    params = torch.cat([shape[:, None].to(torch.float64), r[:, None],
                        cx[:, None], cy[:, None], fg, top, bottom], dim=1)
    attrs = [{"shape": SHAPES[s], "colour": COLOUR_NAMES[c],
              "bg": COLOUR_NAMES[b], "bg2": COLOUR_NAMES[b2] if t else None,
              "size": SIZE_NAMES[z], "place": PLACE_NAMES[p],
              "say_center": bool(sc)}
             for s, c, b, b2, t, z, p, sc in zip(
                 shape.tolist(), colour.tolist(), bg.tolist(), bg2.tolist(),
                 two.tolist(), size.tolist(), place.tolist(),
                 say_center.tolist())]
    return params, attrs


def params_of(attrs, r=None, gen=None):
    """render() params of given attribute dicts, with the default radius of
    their size (or `r`), centred in their place, without jitter."""
    table = {c: list(v) for c, v in COLOURS.items()}
    rows = []
    for a in attrs:
        rad = r if r is not None else sum(SIZES[a["size"]]) / 2
        dx, dy = PLACES[a["place"]]
        reach = SIZE / 2 - rad - MARGIN
        top = table[a["bg"]]
        bottom = table[a["bg2"]] if a.get("bg2") else top
        rows.append([SHAPES.index(a["shape"]), rad, SIZE / 2 + dx * reach,
                     SIZE / 2 + dy * reach] + table[a["colour"]] + top
                    + bottom)
    return torch.tensor(rows, dtype=torch.float64)


class _Scalar:
    """_sdf's operations on Python floats (torch's names)."""
    hypot, atan2, cos, sin = (staticmethod(f) for f in (math.hypot, math.atan2,
                                                        math.cos, math.sin))
    maximum, minimum = staticmethod(max), staticmethod(min)
    remainder = staticmethod(lambda a, b: a % b)


def _sdf(kind, x, y, r, m=None):
    """Signed distance-like function (< 0 inside) of each shape, centred at
    the origin, y down. With m = torch (the default) the arguments are
    tensors that broadcast; with _Scalar they are floats."""
    m = m or torch
    ax, ay = abs(x), abs(y)
    d = m.hypot(x, y)
    if kind == "circle":
        return d - r
    if kind == "square":
        return m.maximum(ax, ay) - 0.85 * r
    if kind == "ring":
        return abs(d - 0.72 * r) - 0.28 * r
    if kind == "cross":
        arm, half = 0.95 * r, 0.32 * r
        return m.minimum(m.maximum(ax - arm, ay - half),
                         m.maximum(ax - half, ay - arm))
    if kind == "triangle":  # equilateral, pointing up, centroid at 0
        big = 1.25 * r
        s = math.sqrt(3.0) / 2
        e1 = y - big / 2                       # bottom edge
        e2 = s * x - 0.5 * y - big / 2         # right edge
        e3 = -s * x - 0.5 * y - big / 2        # left edge
        return m.maximum(e1, m.maximum(e2, e3))
    if kind == "star":  # five points, one up; inner radius 0.45 of outer
        outer, inner = 1.3 * r, 0.45 * 1.3 * r
        theta = m.atan2(x, -y)                 # 0 at the top, clockwise
        sector = 2 * math.pi / 5
        phi = m.remainder(theta, sector)
        phi = m.minimum(phi, sector - phi)     # 0..36 degrees
        qx, qy = d * m.cos(phi), d * m.sin(phi)
        vx, vy = outer, 0.0                     # tip
        wx, wy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
        ex, ey = wx - vx, wy - vy
        # > 0 on the origin's side of the tip-to-notch edge (the origin's
        # own value, ey * vx, is positive)
        return -(ex * (qy - vy) - ey * (qx - vx))
    raise ValueError(kind)


def inside(kind, x, y, r):
    """Whether the point (x, y) (floats, relative to the centre, y down) is
    inside a shape of radius r: the rendering's test, without torch."""
    return _sdf(kind, x, y, r, _Scalar) < 0


def render(params, device="cpu", supersample=4):
    """params [B, 13] (from sample() or params_of()) -> float32 [B, 3, 64, 64] in 0..1."""
    p = params.to(dtype=torch.float32)
    if str(device).startswith("cuda"):
        p = p.pin_memory().to(device, non_blocking=True)
    b = p.shape[0]
    k = supersample
    offs = (torch.arange(k, device=device, dtype=torch.float32) + 0.5) / k
    pix = torch.arange(SIZE, device=device, dtype=torch.float32)
    coords = (pix[:, None] + offs[None, :]).reshape(-1)     # [64k]
    ys = coords[None, :, None]
    xs = coords[None, None, :]
    r = p[:, 1, None, None]
    x = xs - p[:, 2, None, None]
    y = ys - p[:, 3, None, None]
    inside = torch.zeros(b, SIZE * k, SIZE * k, device=device)
    for i, kind in enumerate(SHAPES):
        sel = (p[:, 0] == i)[:, None, None]
        hit = (_sdf(kind, x, y, r) < 0).float()
        inside = torch.where(sel, hit, inside)
    cov = inside.reshape(b, SIZE, k, SIZE, k).mean(dim=(2, 4))[:, None]
    fg = p[:, 4:7, None, None] / 255.0
    top = p[:, 7:10, None, None] / 255.0
    bottom = p[:, 10:13, None, None] / 255.0
    rows = torch.arange(SIZE, device=device)[None, None, :, None]
    bg = torch.where(rows < SIZE // 2, top, bottom)
    return bg * (1 - cov) + fg * cov


def batch(gen, n, device="cpu"):
    """n samples: (images [n, 3, 64, 64] in 0..1, captions, attributes)."""
    params, attrs = sample(gen, n)
    return render(params, device), [caption(a) for a in attrs], attrs


def vocabulary_corpus():
    """Captions that use every word of the grammar (for the tokenizer)."""
    lines = []
    for i, shape in enumerate(SHAPES):
        for j, colour in enumerate(COLOUR_NAMES):
            bg = COLOUR_NAMES[(j + 1 + i) % len(COLOUR_NAMES)]
            bg2 = COLOUR_NAMES[(j + 3 + i) % len(COLOUR_NAMES)]
            size = SIZE_NAMES[(i + j) % len(SIZE_NAMES)]
            place = PLACE_NAMES[(i + 2 * j) % len(PLACE_NAMES)]
            a = {"shape": shape, "colour": colour, "bg": bg, "bg2": None,
                 "size": size, "place": place, "say_center": True}
            lines.append(caption(a))
            lines.append(caption(dict(a, bg2=bg2)))
    return lines


def to_rgb8(images):
    """[B, 3, H, W] in 0..1 -> uint8 [B, H, W, 3] (round half up)."""
    v = torch.floor(images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return v.permute(0, 2, 3, 1).contiguous()
