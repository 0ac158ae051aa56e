#!/usr/bin/env python3
"""Loss curves of a train_demo.py log as SVG figures (stdlib only).

    python3 tests/reference/plot_log.py docs/demo-model/train-log.json docs/demo-model

writes loss-vae.svg and loss-unet.svg into the folder: each loss column
against the step, on a log-scale y axis, with a smoothed line over the raw
points.
"""

import json
import math
import os
import sys

W, H = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 40
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def smooth(ys, k=9):
    out = []
    for i in range(len(ys)):
        part = ys[max(0, i - k // 2):i + k // 2 + 1]
        out.append(sum(part) / len(part))
    return out


def svg(title, steps, series):
    """series: [(name, ys)], all positive."""
    xs0, xs1 = min(steps), max(steps) or 1
    lo = min(min(y for y in ys if y > 0) for _, ys in series)
    hi = max(max(ys) for _, ys in series)
    l0, l1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if l1 == l0:
        l1 += 1

    def px(x):
        return LEFT + (x - xs0) / max(1, xs1 - xs0) * (W - LEFT - RIGHT)

    def py(y):
        v = (math.log10(max(y, 10 ** l0)) - l0) / (l1 - l0)
        return H - BOTTOM - v * (H - TOP - BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" '
           f'height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="16" text-anchor="middle" '
           f'font-size="13">{title}</text>']
    for e in range(l0, l1 + 1):
        y = py(10 ** e)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" '
                   f'y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">1e{e}</text>')
    for i in range(6):
        x = xs0 + (xs1 - xs0) * i / 5
        out.append(f'<text x="{px(x):.1f}" y="{H - BOTTOM + 16}" '
                   f'text-anchor="middle">{int(x)}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" '
               f'text-anchor="middle">step</text>')
    for n, (name, ys) in enumerate(series):
        c = COLOURS[n % len(COLOURS)]
        raw = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(steps, ys))
        sm = " ".join(f"{px(x):.1f},{py(y):.1f}"
                      for x, y in zip(steps, smooth(ys)))
        out.append(f'<polyline points="{raw}" fill="none" stroke="{c}" '
                   f'stroke-opacity="0.25"/>')
        out.append(f'<polyline points="{sm}" fill="none" stroke="{c}" '
                   f'stroke-width="1.5"/>')
        out.append(f'<text x="{W - RIGHT - 4}" y="{TOP + 14 * (n + 1)}" '
                   f'text-anchor="end" fill="{c}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    log = json.load(open(sys.argv[1]))
    outdir = sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    for phase, title in (("vae", "VAE: reconstruction losses"),
                         ("unet", "text encoder + UNet: noise-prediction "
                                  "loss")):
        p = log["phases"][phase]
        cols, rows = p["loss"]["columns"], p["loss"]["rows"]
        steps = [r[0] for r in rows]
        series = [(c, [r[i] for r in rows]) for i, c in enumerate(cols)
                  if i > 0 and c != "kl"]
        with open(os.path.join(outdir, f"loss-{phase}.svg"), "w") as f:
            f.write(svg(title, steps, series))


if __name__ == "__main__":
    main()
