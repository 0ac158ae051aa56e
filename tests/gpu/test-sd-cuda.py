#!/usr/bin/env python3
"""The diffusion runtime on the GPU (gpuhost-sd --cuda, the CUDA backend)
against the PyTorch reference's float64 results for the tiny fixtures
(stdlib only): text encoder, UNet (single file and diffusers folder), VAE
decode and encode, a whole 3-step txt2img run, and the AnimateDiff motion
modules (one UNet evaluation over 2 videos of 8 frames in both naming
layouts, and an 8-frame 3-step video sample). Relative L2 error must be under
1e-4 (the backend computes in fp32), and under 1e-2 in the fp16
tensor-core mode (--fp16). Prints the error of each.

Exits 77 (skipped) when gpuhost-sd has no CUDA backend or finds no GPU.

Usage: test-sd-cuda.py GPUHOST_SD FIXTURES
"""
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
sys.dont_write_bytecode = True
from tensorfiles import npy_floats, st_floats  # noqa: E402

SD, FIX = (os.path.abspath(a) for a in sys.argv[1:3])
EXP = os.path.join(FIX, "expected.safetensors")
TOL = 1e-4
TOL_FP16 = 1e-2  # fp16 tolerance, end to end
SKIP = 77


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def rel_l2(got, want):
    if len(got) != len(want):
        fail("%d values, %d expected" % (len(got), len(want)))
    num = sum((a - b) ** 2 for a, b in zip(got, want))
    den = sum(b * b for b in want)
    return math.sqrt(num / den) if den else math.sqrt(num)


def sd(model, *args):
    r = subprocess.run([SD, "--model", model, "--cuda"] + list(args),
                       capture_output=True, text=True, timeout=300)
    return r


def main():
    single = os.path.join(FIX, "sd-tiny.safetensors")
    tok = os.path.join(FIX, "sd-tiny-diffusers", "tokenizer")
    probe = sd(single, "--tokenizer", tok, "plan")
    if probe.returncode != 0:
        why = probe.stderr.strip()
        if any(s in why for s in ("without the CUDA backend", "libcuda",
                                  "no CUDA", "GPU 0", "device", "driver")):
            print("SKIP: " + why, flush=True)
            sys.exit(SKIP)
        fail("gpuhost-sd --cuda plan: " + why)
    tmp = tempfile.mkdtemp(prefix="gh-sd-cuda-")
    out = os.path.join(tmp, "out.npy")
    cases = [
        ("text encoder", single, ["encode-text", "--ids", EXP + ":text.ids"],
         "text.hidden"),
        ("text encoder, clip skip 2", single,
         ["encode-text", "--ids", EXP + ":text.ids", "--clip-skip", "2"],
         "text.hidden_skip2"),
        ("UNet", single, ["unet", "--x", EXP + ":unet.x", "--t",
                          EXP + ":unet.t", "--context",
                          EXP + ":unet.context"], "unet.out"),
        ("VAE decode", single, ["vae-decode", "--latent",
                                EXP + ":vae.latent"], "vae.decoded"),
        ("VAE encode", single, ["vae-encode", "--image", EXP + ":vae.image"],
         "vae.encoded"),
        ("txt2img, euler, 3 steps", single,
         ["--tokenizer", tok, "sample", "--prompt",
          "a red circle on a blue background", "--sampler", "euler",
          "--steps", "3", "--cfg", "7.5", "--seed", "1234"],
         "txt2img.latent"),
        ("diffusers folder, UNet", os.path.join(FIX, "sd-tiny-diffusers"),
         ["unet", "--x", EXP + ":unet.x", "--t", EXP + ":unet.t",
          "--context", EXP + ":unet.context"], "unet.out"),
        ("UNet, fp16 tensor cores", single,
         ["--fp16", "unet", "--x", EXP + ":unet.x", "--t", EXP + ":unet.t",
          "--context", EXP + ":unet.context"], "unet.out"),
        ("txt2img, fp16 tensor cores", single,
         ["--tokenizer", tok, "--fp16", "sample", "--prompt",
          "a red circle on a blue background", "--sampler", "euler",
          "--steps", "3", "--cfg", "7.5", "--seed", "1234"],
         "txt2img.latent"),
    ]
    # AnimateDiff motion modules: 2 videos of 8 frames, and 8 frames sampled.
    mexp = os.path.join(FIX, "motion-expected.safetensors")
    mm = ["--motion", os.path.join(FIX, "motion-tiny.safetensors"),
          "--frames", "8"]
    munet = ["unet", "--x", mexp + ":motion.unet.x", "--t",
             mexp + ":motion.unet.t", "--context",
             mexp + ":motion.unet.context"]
    msample = ["sample", "--prompt", "a red circle on a blue background",
               "--sampler", "euler", "--steps", "3", "--cfg", "7.5",
               "--seed", "1234", "--width", "64", "--height", "64"]
    cases += [
        ("UNet + motion", single, mm + munet, (mexp, "motion.unet.out")),
        ("UNet + motion, diffusers names", single,
         ["--motion", os.path.join(FIX, "motion-tiny-diffusers.safetensors"),
          "--frames", "8"] + munet, (mexp, "motion.unet.out")),
        ("UNet + motion, fp16", single, mm + ["--fp16"] + munet,
         (mexp, "motion.unet.out")),
        ("video, 8 frames, euler", single, ["--tokenizer", tok] + mm + msample,
         (mexp, "motion.sample.latent")),
        ("video, 8 frames, fp16", single,
         ["--tokenizer", tok] + mm + ["--fp16"] + msample,
         (mexp, "motion.sample.latent")),
    ]
    worst = 0.0
    for what, model, args, want in cases:
        pre = []
        if args[0] == "--tokenizer":
            pre, args = args[:2], args[2:]
        while args[0] in ("--motion", "--frames"):
            pre, args = pre + args[:2], args[2:]
        exp, want = want if isinstance(want, tuple) else (EXP, want)
        r = subprocess.run([SD, "--model", model] + pre + ["--cuda"] + args
                           + ["-o", out], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            fail("%s: gpuhost-sd: %s" % (what, r.stderr.strip()))
        err = rel_l2(npy_floats(out), st_floats(exp, want))
        worst = max(worst, err)
        tol = TOL_FP16 if "fp16" in what else TOL
        print("%-30s relative L2 %.2e" % (what, err), flush=True)
        if not err < tol:
            fail("%s: relative L2 %.3e over %.0e" % (what, err, tol))
    print("PASS (worst %.2e)" % worst, flush=True)


if __name__ == "__main__":
    main()
