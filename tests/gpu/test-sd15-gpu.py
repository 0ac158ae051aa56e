#!/usr/bin/env python3
"""Full-size SD 1.5 on the GPU: a seeded random checkpoint at SD 1.5's sizes
(tests/reference/sd15_random.py; made once, then reused from its cache
folder, $GH_SD15_DIR) through gpuhost-sd --cuda against the PyTorch
reference, and through a real gpuhostd serving the GPU only (needs torch
with CUDA, and numpy).

1. Parity, against the reference in fp32 (no TF32) on the same
   fp16-rounded weights: one UNet evaluation at 512x512 with a batch of 2
   (the CFG pair), gpuhost-sd --cuda --fp16 unet; one VAE decode of a
   64x64 latent, gpuhost-sd --cuda vae-decode, in fp32 and (as a
   precision=fp16 job decodes) with --fp16. Relative L2 error under 1e-2
   each.
2. gpuhostd with [devices] cpu = no and the checkpoint as [model sd15]
   (dtype fp16, the demo model's CLIP tokenizer): txt2img at 512x512,
   precision fp16, 20 steps, into a PNG that must be 512x512 RGB and not
   constant; then img2img of that PNG at strength 0.5, into a 512x512 PNG.
   Prints each job's wall time and device.

--small runs the same on the CPU with a tiny configuration (gpuhost-sd
without --cuda, the daemon's CPU device, 64x64 pictures): it checks this
script where there is no GPU.

Where the python3 running it has no torch, it runs itself again under
$GH_TORCH_PYTHON or else the python3 on PATH. Exits 77 (skipped) without
torch, without CUDA in torch, or when gpuhost-sd has no CUDA backend or
finds no GPU.

Usage: test-sd15-gpu.py GPUHOSTD GPUHOSTCTL WORKER PLUGIN_DIR GPUHOST_SD TOKENIZER_DIR [--small]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.dont_write_bytecode = True
import ghdaemon  # noqa: E402
import png  # noqa: E402

SKIP = 77
TOL = 1e-2
PROMPT = "a red circle on a blue background"


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def skip(msg):
    print("SKIP: " + msg, flush=True)
    sys.exit(SKIP)


args = [a for a in sys.argv[1:] if a != "--small"]
SMALL = "--small" in sys.argv[1:]
if len(args) != 6:
    print(__doc__.strip().splitlines()[-1], file=sys.stderr)
    sys.exit(2)
GPUHOSTD, CTL, WORKER, PLUGINS, SD, TOK = (os.path.abspath(a) for a in args)

def torch_python():
    """Another python3 to run this under when this one lacks torch:
    $GH_TORCH_PYTHON, else the python3 on PATH (ctest runs the python3
    found at configure time, often the system's, while torch lives in a
    virtual environment). Once only (GH_TORCH_REEXEC)."""
    if os.environ.get("GH_TORCH_REEXEC"):
        return None
    for cand in (os.environ.get("GH_TORCH_PYTHON"), shutil.which("python3")):
        if cand and os.path.abspath(cand) != os.path.abspath(sys.executable):
            return cand
    return None


try:
    import numpy as np
    import torch
except ImportError as e:
    other = torch_python()
    if other:
        print("no torch in %s (%s): running under %s"
              % (sys.executable, e, other), flush=True)
        os.environ["GH_TORCH_REEXEC"] = "1"
        os.execv(other, [other] + sys.argv)
    skip("needs torch and numpy: %s" % e)
if not SMALL and not torch.cuda.is_available():
    skip("torch %s has no CUDA device" % torch.__version__)
import sd_ref as R  # noqa: E402
import sd15_random as S  # noqa: E402

DEV = "cpu" if SMALL else "cuda"
WHERE = ["--threads", "2"] if SMALL else ["--cuda"]
FP16 = [] if SMALL else ["--fp16"]
SIZE = 64 if SMALL else 512  # pictures; latents are SIZE / 8


def sd(model, *args, timeout=600):
    return subprocess.run([SD, "--model", model] + list(args),
                          capture_output=True, text=True, timeout=timeout)


def probe_cuda():
    """77 where gpuhost-sd cannot run on the GPU (as test-sd-cuda.py)."""
    small = S.checkpoint(small=True)
    r = sd(small, "--tokenizer", TOK, "--cuda", "plan")
    if r.returncode != 0:
        why = r.stderr.strip()
        if any(s in why for s in ("without the CUDA backend", "libcuda",
                                  "no CUDA", "GPU 0", "device", "driver")):
            skip(why)
        fail("gpuhost-sd --cuda plan: " + why)


def parity(ckpt, cfg, tmp):
    """gpuhost-sd's UNet (CFG pair) and VAE decode against the reference."""
    S.exact_fp32()
    g = torch.Generator().manual_seed(1)
    lat = SIZE // 8
    x = torch.randn(2, 4, lat, lat, generator=g)
    t = torch.full((2,), 999.0)
    ctx = torch.randn(2, 77, cfg.unet.context_dim, generator=g)
    z = torch.randn(1, 4, lat, lat, generator=g)
    inputs = os.path.join(tmp, "inputs.safetensors")
    S.st.save(inputs, {"x": ("F32", x.numpy()), "t": ("F32", t.numpy()),
                       "context": ("F32", ctx.numpy()),
                       "latent": ("F32", z.numpy())})
    out = os.path.join(tmp, "out.npy")
    weights = S.weights(ckpt)
    results = []
    cases = [
        ("UNet, %dx%d, batch 2, %s" % (SIZE, SIZE,
                                        "fp32" if SMALL else "fp16"),
         FP16 + ["unet", "--x", inputs + ":x", "--t", inputs + ":t",
                 "--context", inputs + ":context"],
         lambda: R.load_unet(weights, cfg.unet, torch.float32).to(DEV),
         lambda m: m(x.to(DEV), t.to(DEV), ctx.to(DEV))),
        ("VAE decode, %dx%d latent" % (lat, lat),
         ["vae-decode", "--latent", inputs + ":latent"],
         lambda: R.load_vae(weights, cfg.vae, torch.float32).to(DEV),
         lambda m: m.decode_raw(z.to(DEV))),
    ]
    if FP16:  # a precision=fp16 job's decode
        cases.append(("VAE decode, %dx%d latent, fp16" % (lat, lat),
                      FP16 + cases[-1][1], cases[-1][2], cases[-1][3]))
    for what, cmd, model, run in cases:
        t0 = time.time()
        r = sd(ckpt, *WHERE, *cmd, "-o", out)
        if r.returncode != 0:
            fail("%s: gpuhost-sd: %s" % (what, r.stderr.strip()))
        t_gh = time.time() - t0
        got = np.load(out)
        m = model()
        with torch.no_grad():
            want = run(m).double().cpu().numpy()
        del m
        if DEV == "cuda":
            torch.cuda.empty_cache()
        err = S.rel_l2(got, want)
        results.append((what, err))
        print("%-34s relative L2 %.2e  (gpuhost-sd %.1f s with the load)"
              % (what, err, t_gh), flush=True)
        if not err < TOL:
            fail("%s: relative L2 %.3e over %.0e" % (what, err, TOL))
    return results


def check_png(path, what):
    with open(path, "rb") as f:
        head = f.read(26)
    w, h, rgb, _ = png.read(path)
    if head[25] != 2:
        fail("%s: PNG colour type %d, 2 (RGB) expected" % (what, head[25]))
    if (w, h) != (SIZE, SIZE):
        fail("%s: %dx%d, %dx%d expected" % (what, w, h, SIZE, SIZE))
    pixels = len({rgb[i:i + 3] for i in range(0, len(rgb), 3)})
    if pixels < 2:
        fail("%s: a constant picture" % what)
    mean = sum(rgb) / len(rgb)
    print("%s: %dx%d RGB, %d distinct colours, mean %.1f"
          % (what, w, h, pixels, mean), flush=True)


def job(d, kinds, what, out, *params):
    cmd = ["generate", what, "--model", "sd15", "--json", "-o", out]
    size = ("width=%d" % SIZE, "height=%d" % SIZE) if what == "txt2img" \
        else ()  # img2img: the image's
    for p in size + ("steps=20", "precision=fp16") + params:
        cmd += ["--param", p]
    t0 = time.time()
    reply = json.loads(d.ctl(*cmd))
    wall = time.time() - t0
    dev = reply.get("device")
    kind = kinds.get(dev)
    if kind != ("cpu" if SMALL else "cuda"):
        fail("%s ran on device %s (%s)" % (what, dev, kind))
    print("%s: %.2f s wall time on device %s (%s)" % (what, wall, dev, kind),
          flush=True)
    return wall


def through_daemon(ckpt, tmp):
    devices = ("cpu_memory = 1G\nslab_size = 2M\n" if SMALL
               else "cpu = no\n")
    workers = "cpu_threads = 2\n" if SMALL else ""
    model = ("[model sd15]\npath = %s\ndtype = fp16\ntokenizer = %s\n"
             % (ckpt, TOK))
    try:
        d = ghdaemon.Daemon(GPUHOSTD, CTL, WORKER, PLUGINS,
                            os.path.join(tmp, "daemon"), devices=devices,
                            workers=workers, models=model)
    except ghdaemon.DaemonError as e:
        fail(str(e))
    try:
        kinds = {x["index"]: x["kind"] for x in d.devices()}
        t2i = os.path.join(tmp, "txt2img.png")
        job(d, kinds, "txt2img", t2i, "prompt=" + PROMPT, "seed=1")
        check_png(t2i, "txt2img")
        i2i = os.path.join(tmp, "img2img.png")
        job(d, kinds, "img2img", i2i, "prompt=" + PROMPT, "seed=2",
            "image=@" + t2i, "strength=0.5")
        check_png(i2i, "img2img")
    except ghdaemon.DaemonError as e:
        print(d.log_tail(), flush=True)
        fail(str(e))
    finally:
        if not d.stop():
            print(d.log_tail(), flush=True)
            fail("gpuhostd did not exit cleanly")


def main():
    if not SMALL:
        probe_cuda()
    label, cfg = S.config(SMALL)
    ckpt = S.checkpoint(small=SMALL)
    tmp = tempfile.mkdtemp(prefix="gh-sd15-gpu-")
    print("%s checkpoint on %s: %s" % (label, DEV, ckpt), flush=True)
    parity(ckpt, cfg, tmp)
    through_daemon(ckpt, tmp)
    shutil.rmtree(tmp)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
