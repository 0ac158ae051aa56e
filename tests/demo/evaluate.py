#!/usr/bin/python3
"""Semantic accuracy of the demo model over many pictures, outside CI.

    /usr/bin/python3 tests/demo/evaluate.py --sd build/plugins/diffusion/gpuhost-sd \\
        --model models/demo [--captions 200] [--seeds 100-109]

Two sets, both on seeds that the CI test (test-demo-e2e.py, seeds 7 and
1234) does not use:
  1. the CI prompts (test-demo-e2e.PROMPTS) with each of --seeds;
  2. --captions random captions of the training grammar (shapes.sample,
     generator seed --caption-seed, all sizes, places and two-tone
     backgrounds), one picture each.
Pictures come from gpuhost-sd (the same runtime as the plugins), 20 steps,
euler_a, CFG 7.5. Prints accuracy per set, per shape and per attribute.
Needs torch for set 2 (the caption sampler).
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
import semantic  # noqa: E402
import shapes  # noqa: E402


def ci_prompts():
    src = open(os.path.join(HERE, "..", "test-demo-e2e.py")).read()
    block = src[src.index("PROMPTS = ["):src.index("]", src.index(
        "PROMPTS = ["))]
    return [line.strip().strip(",").strip('"') for line in
            block.splitlines()[1:] if line.strip()]


def generate(sd, model, prompt, seed, tmp):
    out = os.path.join(tmp, "x.ppm")
    subprocess.run([sd, "--model", model, "--threads", "2", "sample",
                    "--prompt", prompt, "--seed", str(seed), "--steps", "20",
                    "--ppm", out], check=True, capture_output=True)
    data = open(out, "rb").read()
    magic, dims, maxval, rgb = data.split(b"\n", 3)
    w, h = map(int, dims.split())
    return w, h, rgb


def run_set(name, items, args, tmp):
    total = collections.Counter()
    shape = collections.defaultdict(collections.Counter)
    for prompt, seed in items:
        j = semantic.judge(prompt, *generate(args.sd, args.model, prompt,
                                             seed, tmp))
        for k in ("ok", "ok_fg", "ok_bg", "ok_shape", "ok_size", "ok_place"):
            total[k] += bool(j[k])
        want = j["expected"]["shape"]
        shape[want]["n"] += 1
        shape[want]["ok"] += bool(j["ok"])
        if not j["ok"] and args.verbose:
            p = j["predicted"]
            print("  miss: %s (seed %d): fg %s bg %s/%s shape %s" % (
                prompt, seed, p["fg_name"], p["bg_name"], p["bg2_name"],
                p["shape"]))
    n = len(items)
    print("%s: %d pictures; all three right %.1f%%; fg %.1f%%, bg %.1f%%, "
          "shape %.1f%% (size %.1f%%, place %.1f%%, informative)" % (
              name, n, *(100 * total[k] / n for k in (
                  "ok", "ok_fg", "ok_bg", "ok_shape", "ok_size",
                  "ok_place"))))
    print("  per shape: " + ", ".join(
        "%s %d/%d" % (s, shape[s]["ok"], shape[s]["n"])
        for s in shapes.SHAPES if shape[s]["n"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--seeds", default="100-109")
    ap.add_argument("--captions", type=int, default=200)
    ap.add_argument("--caption-seed", type=int, default=4242)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    tmp = tempfile.mkdtemp(prefix="gh-demo-eval-")
    run_set("CI prompts, held-out seeds %s" % args.seeds,
            [(p, s) for p in ci_prompts() for s in seeds], args, tmp)
    if args.captions:
        import torch
        gen = torch.Generator().manual_seed(args.caption_seed)
        _, attrs = shapes.sample(gen, args.captions)
        items = [(shapes.caption(a), 5000 + i) for i, a in enumerate(attrs)]
        run_set("random training-grammar captions", items, args, tmp)


if __name__ == "__main__":
    main()
