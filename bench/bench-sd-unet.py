#!/usr/bin/env python3
"""Full-size SD 1.5 UNet on one GPU: gpuhost's CUDA backend against the
PyTorch reference, measured in the same run (needs torch with CUDA, numpy).

    python3 bench/bench-sd-unet.py --sd build/plugins/diffusion/gpuhost-sd [--work DIR]

1. Makes a full-size SD 1.5 checkpoint with seeded random weights (the
   reference's modules at SD 1.5 sizes, PyTorch's default initialisation,
   seed 0), in the original single-file layout, fp16: 1.07 B parameters.
2. PyTorch: the reference UNet in fp16, channels_last, attention through
   scaled_dot_product_attention; UNet evaluations per second for a CFG
   batch (2 x the images) at 512x512 with 1 and 4 images and at 768x768
   with 1, after warm-up, with torch.cuda.synchronize around the timed
   loop; peak memory from max_memory_allocated.
3. gpuhost: `gpuhost-sd --cuda unet --repeat N` on the same checkpoint and
   inputs (fp16 tensor-core mode; fp32 too for the first configuration);
   evaluations per second.
4. Parity: gpuhost's output against the reference UNet in fp32 on the same
   (fp16-rounded) weights: relative L2 error.
Prints one table with the ratio gpuhost / PyTorch.
"""

import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import sd_ref as R  # noqa: E402
import st  # noqa: E402


def sdpa_forward(self, x, context=None):
    """CrossAttention.forward through scaled_dot_product_attention."""
    context = x if context is None else context
    b, n, c = x.shape
    h = self.heads
    q = self.to_q(x).reshape(b, n, h, c // h).transpose(1, 2)
    k = self.to_k(context).reshape(b, -1, h, c // h).transpose(1, 2)
    v = self.to_v(context).reshape(b, -1, h, c // h).transpose(1, 2)
    a = F.scaled_dot_product_attention(q, k, v)
    return self.to_out(a.transpose(1, 2).reshape(b, n, c))


def make_checkpoint(path, cfg):
    torch.manual_seed(0)
    state = R.original_state(R.CLIPTextModel(cfg.clip), R.UNetModel(cfg.unet),
                             R.AutoencoderKL(cfg.vae))
    st.save(path, {k: ("F16", v.half().numpy()) for k, v in state.items()},
            metadata={"format": "pt"}, exact=False)
    return sum(v.numel() for v in state.values())


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", required=True, help="gpuhost-sd")
    ap.add_argument("--work", default="/tmp/gh-bench-sd")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--profile", action="store_true",
                    help="also print gpuhost's time per kind of op (fp16)")
    ap.add_argument("--small", action="store_true",
                    help="a small model on the CPU: checks this script")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    cfg = R.SDConfig.sd15()
    dev, side = "cuda", 64
    if args.small:
        cfg = R.SDConfig(
            clip=R.ClipConfig(vocab_size=600, width=64, layers=1),
            unet=R.UNetConfig(model_channels=32, channel_mult=(1, 2),
                              attention_levels=(1,), num_res_blocks=1,
                              context_dim=64),
            vae=R.VAEConfig(base_channels=32, channel_mult=(1, 1),
                            num_res_blocks=1))
        dev, side = "cpu", 8
    ckpt = os.path.join(args.work, "sd15-random.safetensors")
    t0 = time.time()
    n = make_checkpoint(ckpt, cfg)
    print(f"checkpoint: {n / 1e9:.3f} B parameters, "
          f"{os.path.getsize(ckpt) / 2**30:.2f} GiB, {time.time() - t0:.0f} s",
          flush=True)

    if hasattr(F, "scaled_dot_product_attention"):  # torch 2
        R.CrossAttention.forward = sdpa_forward
    weights = {k: v.astype(np.float32) for k, v in st.load(ckpt)[0].items()
               if k.startswith(R.UNET_PREFIX)}
    half = torch.float16 if dev == "cuda" else torch.float32
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
        st.save(inputs, {"x": ("F32", x.numpy()), "t": ("F32", t.numpy()),
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
        torch_peak = torch.cuda.max_memory_allocated() if dev == "cuda" else 0
        del unet
        if dev == "cuda":
            torch.cuda.empty_cache()
        modes = [("fp16", ["--fp16"])] if not args.small else []
        if ref is not None:
            modes = [("fp32", [])] + modes
            if not args.small:
                modes.append(("fp16, no CUDA graphs", ["--fp16", "--no-graphs"]))
        for mode, flags in modes:
            where = ["--threads", "2"] if args.small else ["--cuda"] + flags
            r = subprocess.run([args.sd, "--model", ckpt] + where + [
                "unet", "--x", inputs + ":x", "--t", inputs + ":t",
                "--context", inputs + ":context", "--repeat", str(args.iters),
                "-o", out], capture_output=True, text=True)
            if r.returncode != 0:
                print("gpuhost-sd failed:", r.stderr, flush=True)
                sys.exit(1)
            print(f"{images}x{sz * 8} {mode}: " + r.stdout.strip(), flush=True)
            its = float(re.search(r"\(([0-9.]+) it/s\)", r.stdout).group(1))
            err = ""
            if ref is not None:
                got = torch.from_numpy(np.load(out)).double()
                err = f"{float((got - ref).norm() / ref.norm()):.2e}"
            table.append((f"{sz * 8}x{sz * 8}, batch {images}", mode, its,
                          torch_its, torch_peak, err))
    print("| UNet (CFG: 2 x batch) | gpuhost mode | gpuhost it/s | "
          "PyTorch it/s | gpuhost / PyTorch | PyTorch peak MiB | "
          "relative L2 against the fp32 reference |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for what, mode, its, tits, peak, err in table:
        print(f"| {what} | {mode} | {its:.2f} | {tits:.2f} | "
              f"{its / tits:.3f} | {peak / 2**20:.0f} | {err} |")
    inputs = os.path.join(args.work, f"inputs-1-{side}.safetensors")
    if args.profile and not args.small:
        r = subprocess.run([args.sd, "--model", ckpt, "--cuda", "--fp16",
                            "--profile", "unet", "--x", inputs + ":x", "--t",
                            inputs + ":t", "--context", inputs + ":context",
                            "--repeat", "3", "-o", out],
                           capture_output=True, text=True)
        print(r.stdout + r.stderr, flush=True)


if __name__ == "__main__":
    main()
