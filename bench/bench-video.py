#!/usr/bin/env python3
"""Text to video, full-size SD 1.5 with a full-size AnimateDiff v2-style
motion module (seeded random weights, AnimateDiff's own layout), gpuhost
against PyTorch in the same run (`gpuhost-bench video`; needs torch with
CUDA and numpy).

    bench-video.py --sd GPUHOST_SD --gpuhostd GPUHOSTD --gpuhostctl CTL
                   --worker WORKER --plugins DIR --tokenizer DIR
                   [--frames 16] [--steps 20] [--jobs 2] [--format mp4|frames]
                   [--parts unet,e2e] [--profile] [--work DIR] [--small]

One clip of --frames frames at 512x512, euler_a, CFG 7.5, --steps steps,
the same prompt and seed everywhere, the UNet and the VAE's decode in fp16
(the text encoder in fp32):
- gpuhostd serving the GPU only, the checkpoint and the motion module as
  two models of the store (dtype fp16): a warm-up job (its MP4 is checked:
  ftyp, then moov), then --jobs timed `gpuhostctl generate video` jobs
  (median wall time); the job's admission estimate (the ledger's
  workspaces while it runs) and the device memory it took over the daemon
  with both models loaded (cuMemGetInfo, sampled every ~5 ms).
- the plugin's runtime alone: `gpuhost-sd --motion --frames sample
  --repeat 1` (its own clock over its second, warm run: prompts, steps,
  decoding every frame; no model load).
- PyTorch: the reference's UNet with the motion modules inserted
  (sd_ref.unet_video; fp16, channels_last, scaled_dot_product_attention),
  the reference's sampler and VAE, in a process of its own, after a
  warm-up; max_memory_allocated and the device memory its process took.
--format frames leaves the MP4 out of the daemon's jobs (for a machine
without FFmpeg; gpuhost-sd and PyTorch encode none either). Prints seconds
per frame for each, the speed ratio PyTorch time / gpuhost
time (>= 1: gpuhost is faster), and the memory rows.

--parts unet times the UNet with the motion modules alone (both sides, a
CFG batch of 2 x frames); e2e the clips; both by default. --profile adds
the time of each kind of op and of each shape on gpuhost's side, and
torch.profiler's busiest kernels on PyTorch's, over the UNet's timed
evaluations.

--small runs it all on the CPU with tiny models (8 frames of 64x64): it
checks this script where there is no GPU.
"""
import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
sys.dont_write_bytecode = True
import numpy as np  # noqa: E402
import torch  # noqa: E402

import ghdaemon  # noqa: E402
import sd15_random as S  # noqa: E402
import sd_ref as R  # noqa: E402

PROMPT = "a red circle moving right on a blue background"
SAMPLER, CFG, SEED = "euler_a", 7.5, 1234
MIB = 2 ** 20
SMALL_THREADS = 3


class BenchError(Exception):
    pass


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def torch_child(spec):
    """The PyTorch clip in a process of its own: prints RESULT {json}."""
    dev, frames = spec["device"], spec["frames"]
    if dev == "cpu":
        torch.set_num_threads(SMALL_THREADS)
    sdpa = S.use_sdpa()
    tp = S.torch_pipeline(spec, spec["motion"])
    clip, unet, mm, half, tok, weights = (
        tp.clip, tp.unet, tp.mm, tp.half, tp.tok, tp.weights)
    gc.collect()
    sched = R.Schedule()
    side = spec["size"] // 8

    def video(x, t, ctx):
        return R.unet_video(unet, mm, x.to(dtype=half,
                                           memory_format=torch.channels_last),
                            t.to(half), ctx.to(half), frames).float()

    def once():
        with torch.no_grad():
            cond, uncond = R.encode_prompt_pair(clip, tok, PROMPT, "")
            lat = R.generate(video, sched, SAMPLER, cond, uncond, CFG,
                             spec["steps"], SEED, (frames, 4, side, side),
                             dtype=torch.float32)
            rgb = [R.to_rgb8(tp.decode(lat[f:f + 1]).cpu())
                   for f in range(frames)]
        return rgb

    secs, peak = [], None
    if spec["clips"]:
        once()  # warm-up
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(spec["runs"]):
            sync(dev)
            t0 = time.perf_counter()
            once()
            secs.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    # The UNet with the modules alone, on the inputs gpuhost-sd gets.
    inp = {k: torch.from_numpy(v).to(dev) for k, v in
           S.st.load(spec["inputs"])[0].items()}
    with torch.no_grad():
        for _ in range(2):
            video(inp["x"], inp["t"], inp["context"])
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(spec["iters"]):
            video(inp["x"], inp["t"], inp["context"])
        sync(dev)
    its = spec["iters"] / (time.perf_counter() - t0)
    if spec["profile"]:
        profile_torch(lambda: video(inp["x"], inp["t"], inp["context"]),
                      spec["iters"], dev)
    print("RESULT " + json.dumps({
        "seconds": secs, "sdpa": sdpa, "weights": weights, "peak": peak,
        "unet_its": its}), flush=True)


def profile_torch(fn, iters, dev):
    """torch.profiler over |iters| calls of fn: the busiest kernels."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                     if dev == "cuda" else [])
    with torch.no_grad(), profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        sync(dev)
    key = "cuda_time_total" if dev == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30,
                                    max_name_column_width=70), flush=True)


def measured(dev, fn):
    before = S.free_memory(dev)
    with S.Sampler(lambda: S.free_memory(dev)) as mem:
        result = fn()
    return result, max(0, before - mem.low)


def run_torch(args, ckpt, motion, dev):
    spec = {"device": dev, "small": args.small, "checkpoint": ckpt,
            "motion": motion, "tokenizer": args.tokenizer,
            "steps": args.steps, "size": args.size, "frames": args.frames,
            "runs": args.jobs, "inputs": args.inputs, "iters": args.iters,
            "clips": "e2e" in args.parts, "profile": args.profile}
    r, used = measured(dev, lambda: subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--torch-child",
         json.dumps(spec)], capture_output=True, text=True))
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise BenchError("the PyTorch clip failed:\n" + r.stdout + r.stderr)
    if args.profile:
        print("\n".join(x for x in r.stdout.splitlines()
                        if not x.startswith("RESULT ")), flush=True)
    res = json.loads(line[-1][len("RESULT "):])
    if not res["seconds"]:
        return res
    res.update(median=statistics.median(res["seconds"]), process=used)
    print("PyTorch: %s s per clip (median of %d), peak allocated %s MiB, its "
          "process took %.0f MiB" % (
              " ".join("%.3f" % s for s in res["seconds"]), len(res["seconds"]),
              "%.0f" % (res["peak"] / MIB) if res["peak"] else "n/a",
              used / MIB), flush=True)
    return res


def write_inputs(args):
    """A CFG batch (2 x frames) of UNet inputs, for both UNet timings."""
    _, cfg = S.config(args.small)
    rs = np.random.RandomState(5)
    n, side = 2 * args.frames, args.size // 8
    args.inputs = os.path.join(args.work, "unet-inputs.safetensors")
    S.st.save(args.inputs, {
        "x": ("F32", rs.standard_normal((n, 4, side, side)).astype(np.float32)),
        "t": ("F32", np.full((n,), 500.0, np.float32)),
        "context": ("F32", rs.standard_normal(
            (n, 77, cfg.unet.context_dim)).astype(np.float32))})


def unet_runtime(args, ckpt, motion):
    """gpuhost-sd's UNet with the modules: evaluations a second, and with
    --profile its time per kind of op."""
    f = args.inputs
    cmd = [args.sd, "--model", ckpt, "--motion", motion, "--frames",
           str(args.frames)] + (["--threads", str(SMALL_THREADS)]
                                if args.small else ["--cuda", "--fp16"]) + \
        (["--profile"] if args.profile else []) + \
        ["unet", "--x", f + ":x", "--t", f + ":t", "--context", f + ":context",
         "--repeat", str(args.iters), "-o", os.path.join(args.work, "u.npy")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError("gpuhost-sd unet: " + r.stderr.strip())
    print(r.stdout.strip(), flush=True)
    line = [x for x in r.stdout.splitlines() if x.startswith("unet:")][-1]
    return float(line.split("(")[1].split(" it/s")[0])


def run_runtime(args, ckpt, motion):
    cmd = [args.sd, "--model", ckpt, "--tokenizer", args.tokenizer,
           "--motion", motion, "--frames", str(args.frames)] + \
        (["--threads", str(SMALL_THREADS)] if args.small
         else ["--cuda", "--fp16"]) + \
        ["sample", "--prompt", PROMPT, "--sampler", SAMPLER, "--steps",
         str(args.steps), "--cfg", str(CFG), "--seed", str(SEED), "--width",
         str(args.size), "--height", str(args.size), "--repeat", "1"]
    totals = []
    for _ in range(args.jobs):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError("gpuhost-sd sample: " + r.stderr.strip())
        last = r.stdout.strip().splitlines()[-1]
        totals.append(float(last.split("total ")[1].split(" s")[0]))
    print("gpuhost-sd sample: %s s (median of %d); last: %s"
          % (" ".join("%.3f" % s for s in totals), len(totals), last),
          flush=True)
    return statistics.median(totals)


def job_args(args):
    out = ["--model", "sd15"]
    for p in ("motion_module=motion", "prompt=" + PROMPT, "seed=%d" % SEED,
              "sampler=" + SAMPLER, "cfg_scale=%g" % CFG,
              "steps=%d" % args.steps, "frames=%d" % args.frames, "fps=8",
              "width=%d" % args.size, "height=%d" % args.size):
        out += ["--param", p]
    if not args.small:
        out += ["--param", "precision=fp16"]
    return out + ["--param", "format=" + args.format]


def run_daemon(args, ckpt, motion, dev):
    devices = ("cpu_memory = 2G\nslab_size = 2M\n" if args.small
               else "cpu = no\n")
    workers = "cpu_threads = %d\n" % SMALL_THREADS if args.small else ""
    models = ('[model sd15]\npath = %s\ndtype = fp16\ntokenizer = %s\n'
              '[model motion]\npath = %s\ndtype = fp16\n'
              % (ckpt, args.tokenizer, motion))
    d = ghdaemon.Daemon(args.gpuhostd, args.gpuhostctl, args.worker,
                        args.plugins, os.path.join(args.work, "daemon"),
                        devices=devices, workers=workers, models=models,
                        daemon="log_level = debug\n",
                        plugin_files=("video.so",))
    res = {}
    with ghdaemon.serving(d, BenchError):
        clip = os.path.join(args.work, "warm-up.mp4")
        reply = json.loads(d.ctl("generate", "video", *job_args(args),
                                 "--json", "-o", clip))
        index = reply.get("device")
        data = open(clip, "rb").read()
        if args.format == "mp4" and (data[4:8] != b"ftyp" or
                                     data.find(b"moov") < 0):
            raise BenchError("the warm-up clip is not an MP4 file")
        if args.format == "frames" and len(data) != \
                args.frames * args.size * args.size * 3:
            raise BenchError("the warm-up job's frames: %d bytes" % len(data))
        walls, phases = [], []
        for _ in range(args.jobs):
            t0 = time.perf_counter()
            tm = json.loads(d.ctl("generate", "video", *job_args(args),
                                  "--json")).get("timing") or {}
            walls.append(time.perf_counter() - t0)
            if tm:
                phases.append([(tm[b] - tm[a]) / 1e6 for a, b in (
                    ("received_usec", "first_step_usec"),
                    ("first_step_usec", "last_step_usec"),
                    ("last_step_usec", "replied_usec"))])
        if phases:
            print("gpuhostd, medians: received to the first step %.3f s, the "
                  "steps (prompts, sampling, decoding%s) %.3f s, the last "
                  "step to the reply %.3f s" % (
                      statistics.median(p[0] for p in phases),
                      ", encoding" if args.format == "mp4" else "",
                      statistics.median(p[1] for p in phases),
                      statistics.median(p[2] for p in phases)), flush=True)
        starts = d.log_lines("start: ")
        if starts:
            print("the plugin's start(): " + starts[-1].strip(), flush=True)
        with S.Sampler(lambda: d.ledger(index).get("workspaces", 0),
                       0.02) as led:
            _, res["increase"] = measured(dev, lambda: d.ctl(
                "generate", "video", *job_args(args), "--json"))
        res.update(median=statistics.median(walls), estimate=led.high,
                   clip_bytes=len(data))
        print("gpuhostd: %s s wall time per clip (median of %d); the warm-up "
              "job's first output: %d bytes (%s)" % (
                  " ".join("%.3f" % s for s in walls), len(walls), len(data),
                  "MP4" if args.format == "mp4" else "RGB8 frames"),
              flush=True)
    return res


def report(args, pt, rt, dm):
    f = args.frames
    where = "CPU, fp32" if args.small else "GPU, UNet and VAE fp16"
    print("\n| %d frames at %dx%d, %d steps, %s (%s) | seconds per clip | "
          "seconds per frame | PyTorch / this (speed) |"
          % (f, args.size, args.size, args.steps, SAMPLER, where))
    print("| --- | --- | --- | --- |")
    for what, s in (("gpuhostd: gpuhostctl generate video, wall time",
                     dm["median"]),
                    ("plugin runtime alone: gpuhost-sd --motion sample", rt),
                    ("PyTorch: the reference with the motion modules",
                     pt["median"])):
        print("| %s | %.3f | %.4f | %.3f |" % (what, s, s / f,
                                               pt["median"] / s))
    print("\n| peak device memory of one clip | MiB |")
    print("| --- | --- |")
    for what, b in (
            ("gpuhost: the job's admission estimate (workspaces)",
             dm["estimate"]),
            ("gpuhost: device memory the job took over the loaded daemon",
             dm["increase"]),
            ("PyTorch: max_memory_allocated (weights included)", pt["peak"]),
            ("PyTorch: of which the weights", pt["weights"]),
            ("PyTorch: device memory its process took", pt["process"])):
        print("| %s | %s |" % (what, "n/a" if b is None else
                               "%.0f" % (b / MIB)))
    print("\nspeed, PyTorch time / gpuhostd time: %.3f (%s 1.0); measured / "
          "estimate: %.3f" % (pt["median"] / dm["median"],
                              ">=" if pt["median"] >= dm["median"] else "<",
                              dm["increase"] / dm["estimate"]
                              if dm["estimate"] else float("nan")))
    if args.small:
        print("(--small: the CPU device; memory figures are rough)")


def main():
    ap = argparse.ArgumentParser(description="Text to video: gpuhost "
                                 "against PyTorch (see the docstring)")
    for n in ("sd", "gpuhostd", "gpuhostctl", "worker", "plugins",
              "tokenizer"):
        ap.add_argument("--" + n)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2,
                    help="timed clips per path")
    ap.add_argument("--format", choices=("mp4", "frames"), default="mp4",
                    help="the video jobs' format (frames: no H.264 encode, "
                    "where FFmpeg is missing)")
    ap.add_argument("--iters", type=int, default=5,
                    help="UNet evaluations timed (each side)")
    ap.add_argument("--parts", default="unet,e2e",
                    help="which parts: unet, e2e (default both)")
    ap.add_argument("--profile", action="store_true",
                    help="both UNets' time per kind of op and shape "
                    "(gpuhost) or kernel (PyTorch)")
    ap.add_argument("--work")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--torch-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        torch_child(json.loads(args.torch_child))
        return 0
    missing = [n for n in ("sd", "gpuhostd", "gpuhostctl", "worker",
                           "plugins", "tokenizer") if not getattr(args, n)]
    if missing:
        ap.error("missing: " + ", ".join("--" + n for n in missing))
    if not 8 <= args.frames <= 32 or args.steps < 1 or args.jobs < 1:
        ap.error("--frames 8..32, --steps and --jobs at least 1")
    args.parts = set(args.parts.split(","))
    if not args.parts or args.parts - {"unet", "e2e"}:
        ap.error("--parts: unet, e2e or both")
    for n in ("sd", "gpuhostd", "gpuhostctl", "worker", "plugins",
              "tokenizer"):
        setattr(args, n, os.path.abspath(getattr(args, n)))
    dev = "cpu" if args.small else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        print("bench-video: torch %s has no CUDA device (--small runs on the "
              "CPU)" % torch.__version__, file=sys.stderr)
        return 1
    args.size = 64 if args.small else 512
    if args.small:
        args.frames = 8
        torch.set_num_threads(SMALL_THREADS)
    own = not args.work
    args.work = args.work or tempfile.mkdtemp(prefix="gh-bench-video-")
    os.makedirs(args.work, exist_ok=True)
    if dev == "cuda":
        print("%s, torch %s" % (torch.cuda.get_device_name(),
                                torch.__version__))
    ckpt = S.checkpoint(small=args.small)
    motion = S.motion_checkpoint(small=args.small)
    try:
        write_inputs(args)
        pt = run_torch(args, ckpt, motion, dev)
        gh_its = unet_runtime(args, ckpt, motion)
        if "e2e" in args.parts:
            rt = run_runtime(args, ckpt, motion)
            dm = run_daemon(args, ckpt, motion, dev)
    except (BenchError, ghdaemon.DaemonError) as e:
        print("bench-video: " + str(e), file=sys.stderr)
        return 1
    if "e2e" in args.parts:
        report(args, pt, rt, dm)
    print("UNet with the motion modules, a CFG batch of %d at %dx%d: gpuhost "
          "%.2f it/s, PyTorch %.2f it/s: %.3f" % (
              2 * args.frames, args.size, args.size, gh_its, pt["unet_its"],
              gh_its / pt["unet_its"]))
    if own:
        shutil.rmtree(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
