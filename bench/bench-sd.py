#!/usr/bin/env python3
"""Full-size SD 1.5 on one GPU: gpuhost (its CUDA backend, the txt2img
plugin's runtime alone and through gpuhostd) against the PyTorch reference,
measured in the same run (needs torch with CUDA, and numpy). Run it as
`gpuhost-bench sd [ARGS]`, which passes the built programs' paths:

    bench-sd.py --sd GPUHOST_SD --gpuhostd GPUHOSTD --gpuhostctl GPUHOSTCTL
                --worker WORKER --plugins PLUGIN_DIR --tokenizer DIR
                [--parts unet,e2e] [--iters N] [--jobs N] [--steps N]
                [--profile] [--work DIR] [--small]

The checkpoint: SD 1.5's sizes with seeded random weights, fp16, 1.07 B
parameters (tests/reference/sd15_random.py: made once, then reused from
its cache folder, $GH_SD15_DIR). The demo model's CLIP tokenizer serves
as its tokenizer. PyTorch runs the reference's modules: the UNet in fp16,
channels_last, attention through scaled_dot_product_attention (torch 2);
the VAE in fp16 too and the text encoder in fp32, as a precision=fp16
job runs them (PyTorch's defaults otherwise: cuDNN may use TF32 there).

unet (part 1): UNet evaluations per second for a CFG batch (2 x the
   images) at 512x512 with 1 and 4 images and at 768x768 with 1:
   PyTorch after warm-up, torch.cuda.synchronize around the timed loop,
   peak memory from max_memory_allocated; gpuhost `gpuhost-sd --cuda unet
   --repeat N` on the same inputs (fp16 tensor-core mode; fp32 and fp16
   without CUDA graphs too for the first size). Parity: gpuhost's output
   against the reference UNet in fp32 (no TF32) on the same fp16-rounded
   weights, relative L2. --profile adds gpuhost's time per kind of op.

e2e (part 2): one 512x512 picture, 30 steps, euler_a, CFG 7.5, the same
   prompt and seed everywhere.
   - Seconds per picture: (a) through gpuhostd serving the GPU only
     ([devices] cpu = no, [scheduler] jobs_per_device = 3, the checkpoint
     as [model sd15] with dtype fp16, the tokenizer and parameters
     {"precision": "fp16"}): one warm-up job (its PNG is checked), then
     --jobs timed `gpuhostctl generate txt2img` jobs, median wall time
     (outputs received and summarized, not written: the runtime's own
     figure encodes no PNG either), and the daemon's own figure (request
     received to reply sent); (b) the plugin's runtime alone,
     `gpuhost-sd --cuda --fp16 sample --repeat 1`, the total it prints
     for its phases (prompts, steps, decode; not the model load) in its
     second, warm run (kernels loaded, cuBLASLt initialised: as in a
     worker that has run a job), median of --jobs processes; (c) PyTorch, the reference's sampler (sd_ref.generate)
     with the text encoding and the VAE decode, synchronized, median of
     --jobs runs after a warm-up, in a process of its own. Ratios:
     daemon / runtime (the daemon's overhead, expected within 3%) and
     gpuhost / PyTorch; the final latents of (b) and (c) are compared too.
     The daemon's phases are printed too (received to the first step,
     the steps, the last step to the reply, from the reply's timing).
     What the ratio carries besides: gpuhost-sd starts its clock after
     tokenizing and planning, which a daemon job does in start(); the
     slice the job ran in is printed (a lone job has the whole device).
   - Peak device memory of one job: PyTorch's max_memory_allocated over
     the generation (weights included) and the device memory its process
     took (cuMemGetInfo, sampled every ~5 ms from this process: context,
     weights, allocator cache); gpuhost's admission estimate (the ledger's
     workspaces in GetStatus while the job runs) and the measured increase
     of device memory while the job runs over the daemon with the model
     loaded; gpuhost-sd's process for comparison (its own weights).
   - Sharing: three txt2img jobs submitted at once (three gpuhostctl
     processes). Free device memory before gpuhostd starts, after the
     model is loaded (after the warm-up job) and the lowest while the
     three run; used = baseline - lowest, next to one copy of the weights
     (the checkpoint's UNet, VAE and text encoder bytes) + 3 x the
     per-job workspace, and next to 3 independent PyTorch processes.
     The daemon's job list shows whether the three ran at the same time.
All tables are markdown. Exits 0 whatever the numbers, 1 on errors.

--small runs everything on the CPU with a tiny configuration (64x64
pictures, the daemon's CPU device with 3 threads, gpuhost-sd --threads 3,
PyTorch on the CPU in fp32; free memory is the kernel's MemAvailable,
so the memory figures mean little): it checks this script end to end.
"""

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import ghdaemon  # noqa: E402
import png  # noqa: E402
import sd_ref as R  # noqa: E402
import sd15_random as S  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse on the moon"
SEED = 1234
SAMPLER = "euler_a"
CFG = 7.5
SMALL_THREADS = 3  # --small: every CPU path the same (3 jobs at once)
MIB = 2.0 ** 20


class BenchError(Exception):
    pass


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def mib(b):
    return "n/a" if b is None else "%.0f" % (b / MIB)


def ratio(a, b):
    return "n/a" if a is None or not b else "%.2f" % (a / b)


def release(dev):
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()


# ---- part 1: the UNet alone ----


def time_torch(unet, x, t, ctx, iters, dev):
    with torch.no_grad():
        for _ in range(5):
            unet(x, t, ctx)
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(iters):
            unet(x, t, ctx)
        sync(dev)
    return iters / (time.perf_counter() - t0)


def unet_part(args, ckpt, cfg, dev):
    weights = S.weights(ckpt, R.UNET_PREFIX)
    half = torch.float16 if dev == "cuda" else torch.float32
    side = 8 if args.small else 64
    # (images per job, latent side): the UNet's batch is twice the images
    # (the CFG pair). 64x64 latents are 512x512 pictures, 96x96 768x768.
    configs = [(1, side)] if args.small else [(1, 64), (4, 64), (1, 96)]
    g = torch.Generator().manual_seed(1)
    out = os.path.join(args.work, "out.npy")
    table = []
    for images, sz in configs:
        batch = 2 * images
        x = torch.randn(batch, 4, sz, sz, generator=g)
        t = torch.full((batch,), 999.0)
        ctx = torch.randn(batch, 77, cfg.unet.context_dim, generator=g)
        inputs = os.path.join(args.work, f"inputs-{images}-{sz}.safetensors")
        S.st.save(inputs, {"x": ("F32", x.numpy()), "t": ("F32", t.numpy()),
                           "context": ("F32", ctx.numpy())})
        unet = R.load_unet(weights, cfg.unet, torch.float32).to(dev)
        ref = None
        if (images, sz) == configs[0]:
            with torch.no_grad():
                ref = unet(x.to(dev), t.to(dev), ctx.to(dev)).double().cpu()
        unet = unet.to(half).to(memory_format=torch.channels_last)
        xh = x.to(dev).to(half).to(memory_format=torch.channels_last)
        if dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        torch_its = time_torch(unet, xh, t.to(dev).to(half),
                               ctx.to(dev).to(half), args.iters, dev)
        torch_peak = (torch.cuda.max_memory_allocated() if dev == "cuda"
                      else None)
        del unet, xh
        release(dev)
        modes = [("fp16", ["--fp16"])] if not args.small else []
        if ref is not None:
            modes = [("fp32", [])] + modes
            if not args.small:
                modes.append(("fp16, no CUDA graphs",
                              ["--fp16", "--no-graphs"]))
        for mode, flags in modes:
            where = (["--threads", "2"] if args.small else ["--cuda"] + flags)
            r = subprocess.run([args.sd, "--model", ckpt] + where + [
                "unet", "--x", inputs + ":x", "--t", inputs + ":t",
                "--context", inputs + ":context", "--repeat", str(args.iters),
                "-o", out], capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError("gpuhost-sd unet: " + r.stderr.strip())
            print(f"{images}x{sz * 8} {mode}: " + r.stdout.strip(), flush=True)
            its = float(re.search(r"\(([0-9.]+) it/s\)", r.stdout).group(1))
            err = ""
            if ref is not None:
                err = f"{S.rel_l2(np.load(out), ref.numpy()):.2e}"
            table.append((f"{sz * 8}x{sz * 8}, batch {images}", mode, its,
                          torch_its, torch_peak, err))
    del weights
    release(dev)
    print("\n| UNet (CFG: 2 x batch) | gpuhost mode | gpuhost it/s | "
          "PyTorch it/s | gpuhost / PyTorch | PyTorch peak MiB | "
          "relative L2 against the fp32 reference |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for what, mode, its, tits, peak, err in table:
        print(f"| {what} | {mode} | {its:.2f} | {tits:.2f} | "
              f"{its / tits:.3f} | {mib(peak)} | {err} |")
    print(flush=True)
    inputs = os.path.join(args.work, f"inputs-1-{side}.safetensors")
    if args.profile and not args.small:
        r = subprocess.run([args.sd, "--model", ckpt, "--cuda", "--fp16",
                            "--profile", "unet", "--x", inputs + ":x", "--t",
                            inputs + ":t", "--context", inputs + ":context",
                            "--repeat", "3", "-o", out],
                           capture_output=True, text=True)
        print(r.stdout + r.stderr, flush=True)


# ---- part 2: end to end ----


def torch_child(spec):
    """The PyTorch generation, in a process of its own (--torch-child):
    prints RESULT {json} (seconds per picture, memory) and saves the last
    run's latent."""
    dev = spec["device"]
    if dev == "cpu":
        torch.set_num_threads(SMALL_THREADS)
    sdpa = S.use_sdpa()
    tp = S.torch_pipeline(spec)
    clip, unet, half, tok, weights = (tp.clip, tp.unet, tp.half, tp.tok,
                                      tp.weights)
    gc.collect()
    sched = R.Schedule()
    side = spec["size"] // 8

    def unet16(x, t, ctx):
        return unet(x.to(dtype=half, memory_format=torch.channels_last),
                    t.to(half), ctx.to(half)).float()

    def once():
        with torch.no_grad():
            cond, uncond = R.encode_prompt_pair(clip, tok, PROMPT, "")
            lat = R.generate(unet16, sched, SAMPLER, cond, uncond, CFG,
                             spec["steps"], SEED, (1, 4, side, side),
                             dtype=torch.float32)
            rgb = R.to_rgb8(tp.decode(lat).cpu())  # waits for the device
        return lat, rgb

    once()  # warm-up
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    secs = []
    for _ in range(spec["runs"]):
        sync(dev)
        t0 = time.perf_counter()
        lat, _ = once()
        secs.append(time.perf_counter() - t0)
    np.save(spec["latent"], lat.cpu().numpy().astype(np.float32))
    print("RESULT " + json.dumps({
        "seconds": secs, "sdpa": sdpa, "weights": weights,
        "unet_dtype": str(half).replace("torch.", ""),
        "peak": torch.cuda.max_memory_allocated() if dev == "cuda" else None,
        }), flush=True)


def measured(dev, fn):
    """fn() while free device memory is sampled every ~5 ms: (its result,
    bytes taken at the most over the free memory before it)."""
    before = S.free_memory(dev)
    with S.Sampler(lambda: S.free_memory(dev)) as mem:
        result = fn()
    return result, max(0, before - mem.low)


def run_torch(args, ckpt, dev):
    latent = os.path.join(args.work, "torch-latent.npy")
    spec = {"device": dev, "small": args.small, "checkpoint": ckpt,
            "tokenizer": args.tokenizer, "steps": args.steps,
            "size": args.size, "runs": args.jobs, "latent": latent}

    def child():
        return subprocess.run([sys.executable, os.path.abspath(__file__),
                               "--torch-child", json.dumps(spec)],
                              capture_output=True, text=True)

    r, used = measured(dev, child)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise BenchError("the PyTorch generation failed:\n" + r.stdout +
                         r.stderr)
    res = json.loads(line[-1][len("RESULT "):])
    res.update(median=statistics.median(res["seconds"]), process=used,
               latent=np.load(latent))
    print("PyTorch: %s s per picture (median of %d), peak allocated %s MiB "
          "(weights %s MiB), its process took %.0f MiB"
          % (" ".join("%.3f" % s for s in res["seconds"]), len(res["seconds"]),
             mib(res["peak"]), mib(res["weights"]), used / MIB), flush=True)
    return res


def sd_where(args):
    return (["--threads", str(SMALL_THREADS)] if args.small
            else ["--cuda", "--fp16"])


def run_runtime(args, ckpt, dev):
    latent = os.path.join(args.work, "gpuhost-latent.npy")
    cmd = [args.sd, "--model", ckpt, "--tokenizer", args.tokenizer] + \
        sd_where(args) + ["sample", "--prompt", PROMPT, "--sampler", SAMPLER,
                          "--steps", str(args.steps), "--cfg", str(CFG),
                          "--seed", str(SEED), "--width", str(args.size),
                          "--height", str(args.size), "--repeat", "1", "-o",
                          latent]
    totals, used, line = [], 0, ""
    for _ in range(args.jobs):
        r, u = measured(dev, lambda: subprocess.run(
            cmd, capture_output=True, text=True))
        if r.returncode != 0:
            raise BenchError("gpuhost-sd sample: " + r.stderr.strip())
        line = r.stdout.strip().splitlines()[-1]
        m = re.search(r"total ([0-9.]+) s; workspace (\d+) bytes planned",
                      line)
        if not m:
            raise BenchError("gpuhost-sd sample printed: " + r.stdout)
        totals.append(float(m.group(1)))
        used = max(used, u)
    print("gpuhost-sd sample: %s s (median of %d); last: %s; its process "
          "took %.0f MiB" % (" ".join("%.3f" % s for s in totals), len(totals),
                             line, used / MIB), flush=True)
    return {"median": statistics.median(totals), "seconds": totals,
            "planned": int(m.group(2)), "process": used,
            "latent": np.load(latent)}


def check_png(path, size):
    w, h, rgb, _ = png.read(path)
    if (w, h) != (size, size) or len(set(rgb[:3 * w * h:7])) < 2:
        raise BenchError("%s: %dx%d (%d x %d expected) or constant"
                         % (path, w, h, size, size))


def job_args(args, seed=SEED):
    """gpuhostctl generate txt2img's arguments for the benchmark's job."""
    out = ["--model", "sd15"]
    for p in ("prompt=" + PROMPT, "seed=%d" % seed, "sampler=" + SAMPLER,
              "cfg_scale=%g" % CFG, "steps=%d" % args.steps,
              "width=%d" % args.size, "height=%d" % args.size):
        out += ["--param", p]
    return out


def run_daemon(args, ckpt, dev):
    job = job_args(args)
    devices = ("cpu_memory = 2G\nslab_size = 2M\n" if args.small
               else "cpu = no\n")
    workers = "cpu_threads = %d\n" % SMALL_THREADS if args.small else ""
    model = ('[model sd15]\npath = %s\ndtype = fp16\ntokenizer = %s\n'
             'parameters = {"precision": "fp16"}\n' % (ckpt, args.tokenizer))
    res = {"baseline": S.free_memory(dev)}
    d = ghdaemon.Daemon(args.gpuhostd, args.gpuhostctl, args.worker,
                        args.plugins, os.path.join(args.work, "daemon"),
                        devices=devices, scheduler="jobs_per_device = 3\n",
                        workers=workers, models=model,
                        daemon="log_level = debug\n")
    with ghdaemon.serving(d, BenchError):
        devs = {x["index"]: x for x in d.devices()}
        kinds = {i: x["kind"] for i, x in devs.items()}
        warm = os.path.join(args.work, "warm-up.png")
        reply = json.loads(d.ctl("generate", "txt2img", *job, "--json",
                                 "-o", warm))
        index = reply.get("device")
        if kinds.get(index) != ("cpu" if args.small else "cuda"):
            raise BenchError("the warm-up job ran on device %s (%s)"
                             % (index, kinds.get(index)))
        check_png(warm, args.size)
        res["loaded"] = S.free_memory(dev)
        res["ledger_weights"] = d.ledger(index).get("weights", 0)
        walls, own, phases = [], [], []
        for _ in range(args.jobs):
            t0 = time.perf_counter()
            reply = json.loads(d.ctl("generate", "txt2img", *job, "--json"))
            walls.append(time.perf_counter() - t0)
            tm = reply.get("timing") or {}
            if tm:
                own.append((tm["replied_usec"] - tm["received_usec"]) / 1e6)
                phases.append([(tm[b] - tm[a]) / 1e6 for a, b in (
                    ("received_usec", "first_step_usec"),
                    ("first_step_usec", "last_step_usec"),
                    ("last_step_usec", "replied_usec"))])
        res.update(median=statistics.median(walls), seconds=walls,
                   own=statistics.median(own) if own else None,
                   phases=[statistics.median(p) for p in zip(*phases)]
                   if phases else None)
        print("gpuhostd: %s s wall time per job (median of %d); the daemon's "
              "own (received to replied): %s" % (
                  " ".join("%.3f" % s for s in walls), len(walls),
                  "%.3f s" % res["own"] if own else "not reported"),
              flush=True)
        starts = d.log_lines("start: ")
        if starts:
            print("gpuhostd's log, the plugin's start() of the last job: "
                  + starts[-1].strip(), flush=True)
        if res["phases"]:
            print("gpuhostd, medians: request received to the first step "
                  "(queue, worker, start(): setup and planning) %.4f s; the "
                  "steps (prompts, sampling, decode) %.4f s; the last step "
                  "to the reply (finish(), outputs) %.4f s"
                  % tuple(res["phases"]), flush=True)

        # One job with the memory sampled, the ledger and the job's slice
        # (SMs, or threads on the CPU) polled.
        def slice_size():
            return max([(j.get("slice") or {}).get(
                "sms" if kinds[index] == "cuda" else "threads") or 0
                for j in d.jobs() if j.get("state") == "running"] + [0])

        with S.Sampler(lambda: d.ledger(index).get("workspaces", 0),
                       0.02) as led, S.Sampler(slice_size, 0.02) as sl:
            _, res["job_increase"] = measured(dev, lambda: d.ctl(
                "generate", "txt2img", *job, "--json"))
        res["estimate"] = led.high
        res["slice"] = ("%s SMs of the device's %s" if kinds[index] == "cuda"
                        else "%s threads on the device's %s CPUs") % (
            sl.high or "?", devs[index].get("sm_count"))

        # Three at once.
        def three():
            procs = [d.popen("generate", "txt2img",
                             *job_args(args, SEED + k), "--tag", "share",
                             "--json", "-o",
                             os.path.join(args.work, "share-%d.png" % k))
                     for k in range(3)]
            t0 = time.perf_counter()
            outs = [p.communicate() for p in procs]
            wall = time.perf_counter() - t0
            for p, (o, e) in zip(procs, outs):
                if p.returncode != 0:
                    raise BenchError("a shared job failed: " + o + e)
            return wall

        baseline_free = res["baseline"]
        with S.Sampler(lambda: d.ledger(index).get("workspaces", 0),
                       0.02) as led:
            with S.Sampler(lambda: S.free_memory(dev)) as mem:
                res["share_wall"] = three()
        res["share_used"] = max(0, baseline_free - mem.low)
        res["share_reserved"] = led.high
        for k in range(3):
            check_png(os.path.join(args.work, "share-%d.png" % k), args.size)
        share = [j for j in d.jobs() if j.get("tag") == "share"]
        starts = [j.get("started_usec") or 0 for j in share]
        ends = [j.get("finished_usec") or 0 for j in share]
        res["overlap"] = (len(share) == 3 and all(starts) and all(ends) and
                          max(starts) < min(ends))
        res["share_jobs"] = [((e - s) / 1e6, j.get("device"))
                             for j, s, e in zip(share, starts, ends)]
        res["share_overlap_s"] = ((min(ends) - max(starts)) / 1e6
                                  if res["overlap"] else 0.0)
    return res


def e2e_part(args, ckpt, dev):
    release(dev)
    S.free_memory(dev)  # this process's context exists before any baseline
    pt = run_torch(args, ckpt, dev)
    rt = run_runtime(args, ckpt, dev)
    dm = run_daemon(args, ckpt, dev)
    weights = S.part_bytes(ckpt)
    wsum = sum(weights.values())
    where = "CPU, fp32" if args.small else "GPU"
    size = "%dx%d" % (args.size, args.size)

    print("\n| %s, %d steps, %s, CFG %g (%s) | seconds per picture | "
          "runs | / plugin runtime | / PyTorch |" % (size, args.steps,
                                                     SAMPLER, CFG, where))
    print("| --- | --- | --- | --- | --- |")
    rows = [("gpuhostd: gpuhostctl generate txt2img, wall time", dm["median"],
             len(dm["seconds"]))]
    if dm["own"] is not None:
        rows.append(("gpuhostd: its own timing (request received to reply "
                     "sent)", dm["own"], len(dm["seconds"])))
    rows += [("plugin runtime alone: gpuhost-sd sample (no model load)",
              rt["median"], len(rt["seconds"])),
             ("PyTorch: %s UNet (%s) and VAE, fp32 text encoder"
              % (pt["unet_dtype"], "SDPA" if pt["sdpa"]
                 else "reference attention"),
              pt["median"], len(pt["seconds"]))]
    for what, s, n in rows:
        print("| %s | %.3f | %d | %.3f | %.3f |"
              % (what, s, n, s / rt["median"], s / pt["median"]))
    if dm.get("phases"):
        print("\nWhere the daemon's extra time goes: its steps (prompts, "
              "sampling, decode) took %.4f s against gpuhost-sd's %.4f s "
              "(%.3f); before them %.4f s, after them %.4f s."
              % (dm["phases"][1], rt["median"],
                 dm["phases"][1] / rt["median"], dm["phases"][0],
                 dm["phases"][2]))
    over = dm["median"] / rt["median"]
    finite = [what for what, lat in (("gpuhost-sd's", rt["latent"]),
                                     ("PyTorch's", pt["latent"]))
              if not np.isfinite(lat).all()]
    latents = ("relative L2 %.2e" % S.rel_l2(rt["latent"], pt["latent"])
               if not finite else "not compared: %s not finite (fp16 "
               "overflow on random weights)" % " and ".join(finite))
    print("\ndaemon / plugin runtime: %.3f (the daemon's overhead %s 3%%); gpuhost (daemon) / "
          "PyTorch: %.3f; final latents, gpuhost-sd against PyTorch: "
          "%s. The daemon's jobs ran in a slice of %s; "
          "gpuhost-sd's clock leaves out its tokenizing and planning, a "
          "daemon job's does not." % (
              over, "within" if over <= 1.03 else "NOT within",
              dm["median"] / pt["median"], latents, dm["slice"]))

    print("\n| peak device memory of one %s job | MiB |" % size)
    print("| --- | --- |")
    peak = pt["peak"]
    mem_rows = [
        ("PyTorch: max_memory_allocated over the generation (weights "
         "included)", peak),
        ("PyTorch: of which the weights (UNet and VAE %s, text encoder "
         "fp32)" % pt["unet_dtype"], pt["weights"] if peak else None),
        ("PyTorch: the generation beyond the weights",
         peak - pt["weights"] if peak else None),
        ("PyTorch: device memory its process took (context, weights, "
         "allocator cache)", pt["process"]),
        ("gpuhost: the job's admission estimate (GetStatus ledger, "
         "workspaces while it runs)", dm["estimate"]),
        ("gpuhost: device memory taken while the job runs, over the daemon "
         "with the model loaded", dm["job_increase"]),
        ("gpuhost: the runtime's planned workspace (gpuhost-sd, without "
         "the backend's work buffer)", rt["planned"]),
        ("gpuhost-sd: device memory its process took (context, its own "
         "weights, workspace)", rt["process"]),
    ]
    for what, b in mem_rows:
        print("| %s | %s |" % (what, mib(b)))

    print("\n| three %s jobs at once on one device | MiB |" % size)
    print("| --- | --- |")
    loaded = dm["baseline"] - dm["loaded"]
    ideal = wsum + 3 * dm["estimate"]
    torch3 = 3 * peak if peak else None
    share_rows = [
        ("free before gpuhostd starts (the baseline)", dm["baseline"]),
        ("used after the model is loaded (daemon, worker, weights): "
         "baseline - free", loaded),
        ("used at the peak while the three run: baseline - lowest free",
         dm["share_used"]),
        ("one copy of the weights (the checkpoint's %s MiB)" % ", ".join(
            "%s %s" % (k, mib(v)) for k, v in weights.items()), wsum),
        ("the daemon's ledger: weights (pool slabs)", dm["ledger_weights"]),
        ("the daemon's ledger: workspaces reserved at the peak (3 jobs)",
         dm["share_reserved"]),
        ("one copy of the weights + 3 x the per-job workspace", ideal),
        ("the three jobs' increase over the loaded daemon: peak - loaded",
         dm["share_used"] - loaded),
        ("3 x the per-job workspace (admission estimate)",
         3 * dm["estimate"]),
        ("3 PyTorch processes: 3 x max_memory_allocated (weights included)",
         torch3),
        ("3 PyTorch processes: 3 x the device memory one process took",
         3 * pt["process"]),
    ]
    for what, b in share_rows:
        print("| %s | %s |" % (what, mib(b)))
    print("\nused / (weights + 3 x workspace): %s (the loaded daemon's "
          "contexts beyond its weights: %s MiB); the jobs' increase / 3 x "
          "workspace: %s; used / 3 PyTorch processes: %s "
          "(max_memory_allocated), %s (measured)" % (
              ratio(dm["share_used"], ideal), mib(loaded - wsum),
              ratio(dm["share_used"] - loaded, 3 * dm["estimate"]),
              ratio(dm["share_used"], torch3),
              ratio(dm["share_used"], 3 * pt["process"])))
    print("the three jobs %s: %.2f s wall time for all three (one alone: "
          "%.3f s); each ran %s s on device %s; overlap %.2f s" % (
              "overlapped" if dm["overlap"] else "did NOT overlap",
              dm["share_wall"], dm["median"],
              "/".join("%.2f" % s for s, _ in dm["share_jobs"]),
              "/".join(str(x) for _, x in dm["share_jobs"]),
              dm["share_overlap_s"]), flush=True)
    if args.small:
        print("(--small: the CPU device, free memory from MemAvailable: the "
              "memory figures are rough)")


def main():
    ap = argparse.ArgumentParser(
        description="Full-size SD 1.5: gpuhost against PyTorch "
        "(see the file's docstring)")
    ap.add_argument("--sd", help="gpuhost-sd")
    ap.add_argument("--gpuhostd")
    ap.add_argument("--gpuhostctl")
    ap.add_argument("--worker", help="gpuhost-worker")
    ap.add_argument("--plugins", help="the folder with txt2img.so, img2img.so")
    ap.add_argument("--tokenizer", help="a CLIP tokenizer folder (vocab.json, "
                    "merges.txt): the demo model's")
    ap.add_argument("--parts", default="unet,e2e",
                    help="which parts: unet, e2e (default both)")
    ap.add_argument("--work", help="scratch folder (default: a temporary "
                    "one, removed at the end)")
    ap.add_argument("--iters", type=int, default=20,
                    help="UNet evaluations timed per configuration")
    ap.add_argument("--jobs", type=int, default=5,
                    help="timed pictures per end-to-end path")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--profile", action="store_true",
                    help="also print gpuhost's time per kind of op (fp16)")
    ap.add_argument("--small", action="store_true",
                    help="a small model on the CPU: checks this script")
    ap.add_argument("--torch-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        torch_child(json.loads(args.torch_child))
        return 0
    parts = set(args.parts.split(","))
    if not parts or parts - {"unet", "e2e"}:
        ap.error("--parts: unet, e2e or both")
    need = ["sd"] + (["gpuhostd", "gpuhostctl", "worker", "plugins",
                      "tokenizer"] if "e2e" in parts else [])
    missing = [n for n in need if not getattr(args, n)]
    if missing:
        ap.error("missing: " + ", ".join("--" + n for n in missing))
    for n in need:
        setattr(args, n, os.path.abspath(getattr(args, n)))
    dev = "cpu" if args.small else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        print("bench-sd: torch %s has no CUDA device (--small runs on the "
              "CPU)" % torch.__version__, file=sys.stderr)
        return 1
    args.size = 64 if args.small else 512
    own_work = not args.work
    args.work = args.work or tempfile.mkdtemp(prefix="gh-bench-sd-")
    os.makedirs(args.work, exist_ok=True)
    label, cfg = S.config(args.small)
    if dev == "cuda":
        print("%s, torch %s" % (torch.cuda.get_device_name(),
                                torch.__version__))
    ckpt = S.checkpoint(small=args.small)
    if args.small:
        torch.set_num_threads(SMALL_THREADS)
    if S.use_sdpa():
        print("PyTorch attention: scaled_dot_product_attention")
    try:
        if "unet" in parts:
            S.exact_fp32()  # the parity reference; fp16 timings unaffected
            unet_part(args, ckpt, cfg, dev)
        if "e2e" in parts:
            e2e_part(args, ckpt, dev)
    except (BenchError, ghdaemon.DaemonError) as e:
        print("bench-sd: " + str(e), file=sys.stderr)
        return 1
    if own_work:
        shutil.rmtree(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
