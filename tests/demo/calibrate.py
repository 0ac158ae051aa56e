#!/usr/bin/env python3
"""Chooses the thresholds of semantic.py's shape rule on ground truth and
writes tests/demo/thresholds.json.

Renders held-out images with tests/reference/shapes.py (one CPU
torch.Generator per image, seeded with each seed in turn; the training data
is drawn from other seeds), reduces them to RGB8 with shapes.to_rgb8,
computes semantic.py's features, and fits each threshold of the rule, in
the rule's order: the cut between the two groups it separates with the
fewest errors on the medium and large shapes, then on the small ones
(13-17 px across), at the midpoint of the gap between neighbouring feature
values (so the widest margin among equally good cuts). Medium + large and
small are scored separately.

With --blur each image is also scored after a 3x3 box blur (edges
replicated; --blur-size for another box), a stand-in for the softer edges
of the model's VAE decoder, and the thresholds are fitted on both versions
together. --noise adds Gaussian noise to every render, as a stress test.

Needs torch and about a minute (run it with a python that has torch):

    python3 tests/demo/calibrate.py --blur
"""

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import semantic  # noqa: E402  (adds ../reference to sys.path)
import shapes  # noqa: E402

SHAPES = shapes.SHAPES


def render(seeds, blur=0, noise=0.0):
    """-> [(attrs, rgb8 bytes)] for the seeds, box-blurred (blur x blur,
    edges replicated) if blur > 1, with Gaussian noise of standard
    deviation `noise` (in 0..255 units) if noise > 0."""
    params, attrs = [], []
    for s in seeds:
        p, a = shapes.sample(torch.Generator().manual_seed(s), 1)
        params.append(p)
        attrs += a
    img = shapes.render(torch.cat(params))
    if blur > 1:
        lo, hi = (blur - 1) // 2, blur // 2
        pad = torch.nn.functional.pad(img, (lo, hi, lo, hi), mode="replicate")
        img = torch.nn.functional.avg_pool2d(pad, blur, stride=1)
    if noise > 0:
        g = torch.Generator().manual_seed(seeds[0])
        img = img + torch.randn(img.shape, generator=g) * (noise / 255.0)
    rgb = shapes.to_rgb8(img)
    return [(a, bytes(rgb[i].reshape(-1).tolist()))
            for i, a in enumerate(attrs)]


def best_cut(pos, neg):
    """pos, neg: [(feature value, primary)]. -> (t, errors on primary,
    errors on the rest): the threshold t, `value >= t` meaning pos, with
    the fewest errors on the primary samples, then on the rest, then the
    widest gap between neighbouring values; t is that gap's midpoint."""
    vals = sorted({v for v, _ in pos} | {v for v, _ in neg})
    if len(vals) < 2:
        return (vals[0] if vals else 0.5), 0, 0
    best = None
    for lo, hi in zip(vals, vals[1:]):
        t = (lo + hi) / 2
        err = [0, 0]
        for v, primary in pos:
            err[not primary] += v < t
        for v, primary in neg:
            err[not primary] += v >= t
        key = (err[0], err[1], -(hi - lo))
        if best is None or key < best[0]:
            best = (key, t)
    (e1, e2, _), t = best
    return t, e1, e2


def fit(samples):
    """samples: [(true shape, features, primary)] -> thresholds, fitted in
    the order in which semantic.classify() applies them; primary samples
    (medium and large) decide, the rest (small) only break ties."""
    th = {}

    def split(rows, name, positive, negative, feature):
        pos = [(f[feature], p) for s, f, p in rows if s in positive]
        neg = [(f[feature], p) for s, f, p in rows if s in negative]
        th[name], e1, e2 = best_cut(pos, neg)

        def rng(vals):
            v = [x for x, p in vals if p]
            return f"{min(v):.3f}..{max(v):.3f}" if v else "-"
        print(f"  {name:15s} = {th[name]:.4f}  {feature}: "
              f"{'/'.join(positive)} {rng(pos)} vs {'/'.join(negative)} "
              f"{rng(neg)}; errors {e1} medium/large, {e2} small")

    rows = samples
    split(rows, "hole_centre_bg", ["ring"], [s for s in SHAPES
                                              if s != "ring"], "centre_bg")
    rows = [x for x in rows if x[1]["centre_bg"] < th["hole_centre_bg"]]
    pointed, upright = ["triangle", "star"], ["square", "circle", "cross"]
    # ud_sym < t means pointed, so the group at or above t is the upright
    split(rows, "ud_sym_pointed", upright, pointed, "ud_sym")
    low = [x for x in rows if x[1]["ud_sym"] < th["ud_sym_pointed"]]
    high = [x for x in rows if x[1]["ud_sym"] >= th["ud_sym_pointed"]]
    split(low, "bottom_triangle", ["triangle"], ["star"], "bottom_fill")
    split(high, "corners_square", ["square"], ["circle", "cross"],
          "corners")
    high = [x for x in high if x[1]["corners"] < th["corners_square"]]
    split(high, "fill_circle", ["circle"], ["cross"], "fill")
    return th


FEATURES = ["fill", "ud_sym", "lr_sym", "centre_bg", "corners",
            "bottom_fill", "aspect", "centroid_rel_y"]


def print_ranges(title, rows):
    """Range (min..max) of each feature per true class."""
    print(f"\nfeature ranges, {title}:")
    print("  " + " " * 9 + "".join(f"{f[:11]:>14s}" for f in FEATURES))
    for s in SHAPES:
        fs = [r["features"] for a, r in rows
              if a["shape"] == s and r["features"]]
        if not fs:
            continue
        print(f"  {s:9s}" + "".join(
            f"{min(f[k] for f in fs):6.2f}..{max(f[k] for f in fs):4.2f}  "
            for k in FEATURES))


def confusion(rows, th):
    """-> (matrix {true: {pred: n}}, accuracy per class, overall)."""
    m = {s: {p: 0 for p in SHAPES + ["none"]} for s in SHAPES}
    for a, res in rows:
        f = res["features"]
        pred = semantic.classify(f, th) if f else "none"
        m[a["shape"]][pred] += 1
    acc = {s: m[s][s] / max(1, sum(m[s].values())) for s in SHAPES}
    total = sum(sum(r.values()) for r in m.values())
    overall = sum(m[s][s] for s in SHAPES) / max(1, total)
    return m, acc, overall


def print_confusion(title, m, acc, overall):
    cols = SHAPES + ["none"]
    print(f"\n{title}: shape accuracy {overall:.4f} "
          f"(rows: truth, columns: predicted)")
    print("  " + " " * 9 + "".join(f"{c[:8]:>9s}" for c in cols)
          + "      acc")
    for s in SHAPES:
        print(f"  {s:9s}" + "".join(f"{m[s][c]:9d}" for c in cols)
              + f"   {acc[s]:.4f}")


def attribute_accuracy(rows):
    """Accuracy of colour names, two-tone detection, size and place."""
    n = len(rows)
    fg = bg = tone = size = place = 0
    for a, res in rows:
        fg += res["fg_name"] == a["colour"]
        tone += res["two_tone"] == (a["bg2"] is not None)
        if a["bg2"] is None:
            bg += not res["two_tone"] and res["bg_name"] == a["bg"]
        else:
            bg += res["two_tone"] and res["bg_name"] == a["bg"] \
                and res["bg2_name"] == a["bg2"]
        size += res.get("size") == a["size"]
        place += res.get("place") == a["place"]
    return {"fg_colour": fg / n, "bg_colour": bg / n, "two_tone": tone / n,
            "size": size / n, "place": place / n}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--count", type=int, default=1800,
                    help="images (about count/6 per shape)")
    ap.add_argument("--blur", action="store_true",
                    help="also score and fit on box-blurred renders")
    ap.add_argument("--blur-size", type=int, default=3, metavar="K",
                    help="the blur's box is K x K pixels (default 3)")
    ap.add_argument("--noise", type=float, default=0.0, metavar="S",
                    help="add Gaussian noise of standard deviation S "
                    "(0..255 units) to every render (a stress test)")
    ap.add_argument("--out", default=semantic.THRESHOLDS_PATH)
    args = ap.parse_args()

    seeds = range(args.first_seed, args.first_seed + args.count)
    variants = ["clean"] + (["blur"] if args.blur else [])
    dummy = {"hole_centre_bg": 2, "ud_sym_pointed": 0,
             "bottom_triangle": 0, "corners_square": 0, "fill_circle": 0}
    scored = {}
    t0 = time.perf_counter()
    for v in variants:
        scored[v] = []
        for a, rgb in render(seeds, args.blur_size if v == "blur" else 0,
                             args.noise):
            res = semantic.analyse(shapes.SIZE, shapes.SIZE, rgb, dummy)
            scored[v].append((a, res))
    per = (time.perf_counter() - t0) / (len(seeds) * len(variants))
    print(f"analysed {len(seeds)} images x {len(variants)} "
          f"({', '.join(variants)}): {per * 1000:.1f} ms per image")

    fit_rows = [(a["shape"], r["features"], a["size"] != "small")
                for v in variants for a, r in scored[v] if r["features"]]
    print(f"\nfitting on {len(fit_rows)} images ({' + '.join(variants)}); "
          f"medium and large decide, small breaks ties:")
    th = fit(fit_rows)
    for v in variants:
        for a, r in scored[v]:
            if r["features"]:
                r.update(semantic.describe(r["features"], th))
        print_ranges(f"{v}, medium + large",
                     [x for x in scored[v] if x[0]["size"] != "small"])
        print_ranges(f"{v}, small",
                     [x for x in scored[v] if x[0]["size"] == "small"])

    report = {}
    for v in variants:
        groups = {
            "medium_large": [x for x in scored[v] if x[0]["size"] != "small"],
            "small": [x for x in scored[v] if x[0]["size"] == "small"],
            "all": scored[v],
        }
        report[v] = {}
        for g, rows in groups.items():
            m, acc, overall = confusion(rows, th)
            print_confusion(f"{v}, {g.replace('_', ' + ')} "
                            f"({len(rows)} images)", m, acc, overall)
            report[v][g] = {"images": len(rows),
                            "shape": round(overall, 4),
                            "shape_per_class": {s: round(x, 4)
                                                for s, x in acc.items()}}
        attrs = attribute_accuracy(scored[v])
        tone = attribute_accuracy([x for x in scored[v]
                                   if x[0]["bg2"] is not None])
        n_tone = sum(1 for x in scored[v] if x[0]["bg2"] is not None)
        print(f"\n{v}: attributes over all {len(scored[v])} images: "
              + ", ".join(f"{k} {x:.4f}" for k, x in attrs.items()))
        print(f"{v}: two-tone images only ({n_tone}): "
              + ", ".join(f"{k} {x:.4f}" for k, x in tone.items()))
        report[v]["attributes_all"] = {k: round(x, 4)
                                       for k, x in attrs.items()}
        report[v]["attributes_two_tone"] = {k: round(x, 4)
                                            for k, x in tone.items()}

    doc = {
        "shape": {k: round(x, 4) for k, x in th.items()},
        "chosen_on": {
            "generator": "tests/reference/shapes.py: sample(gen, 1) with "
                         "gen = torch.Generator().manual_seed(seed) per "
                         "image, render() (4x4 supersampling), to_rgb8()",
            "seeds": f"{seeds.start}..{seeds.stop - 1}",
            "count": len(seeds),
            "noise": args.noise,
            "variants": variants if len(variants) == 1 else
            ["clean", f"blur ({args.blur_size}x{args.blur_size} box, edges "
                      "replicated)"],
            "fitted_on": "every variant, plain and two-tone backgrounds; "
                         "fewest errors on medium and large shapes, ties "
                         "broken by the small ones, then the widest gap",
            "rule": "centre_bg >= hole_centre_bg: ring; ud_sym < "
                    "ud_sym_pointed: (bottom_fill >= bottom_triangle: "
                    "triangle, else star); corners >= corners_square: "
                    "square; fill >= fill_circle: circle; else cross",
            "accuracy": report,
        },
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
