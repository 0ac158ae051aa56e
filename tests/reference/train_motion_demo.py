#!/usr/bin/env python3
"""Train the demo motion module: AnimateDiff-style temporal modules (the
reference's MotionAdapter, v2 layout with a mid-block module) for the demo
model, on procedurally generated clips of one shape moving right.

    python3 tests/reference/train_motion_demo.py --model models/demo \\
        --out models/demo-motion                    # on a GPU
    python3 tests/reference/train_motion_demo.py --model models/demo \\
        --out /tmp/mm --smoke                       # a CPU check

The data: shapes.py's pictures (any shape, colour and background; small or
medium size), each a clip of FRAMES frames in which the shape moves right
at 2.5 to 4.5 pixels per frame and passes the centre at the middle frame.
The caption is the shape's caption without a place ("a red circle on a blue
background"): the demo model draws such shapes in the centre, and the
motion module learns to spread the frames along the path. It has learned
one motion; a prompt cannot ask for another, as AnimateDiff's modules do
not see the prompt either.

Training: the text encoder, UNet and VAE are frozen (the shipped demo
weights); only the motion modules learn, from AnimateDiff's start (proj_out
zero, so training starts at the image model). Epsilon prediction on SD's
schedule, one timestep per clip, independent noise per frame, min-SNR-5
weighting, 10 % empty captions, bf16 autocast, an EMA of the weights.

At the end it samples a few clips with the reference (euler, CFG 7) and
prints each frame's foreground centroid (tests/demo/semantic.py): the
check that tests/test-demo-e2e.py repeats through gpuhostd.

Output: demo-motion.safetensors in AnimateDiff's own naming (fp16, the
positional encodings fp32, as mm_sd_v15_v2.ckpt) and train-log.json.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "demo"))
import sd_ref as R  # noqa: E402
import shapes  # noqa: E402
import st  # noqa: E402
import train_demo as TD  # noqa: E402
import semantic  # noqa: E402

FRAMES = 8
MAX_LEN = 32
SPEED = (2.5, 4.5)      # pixels per frame
EVAL_PROMPTS = ["a red circle on a blue background",
                "a yellow square on a purple background",
                "a white star on a black background",
                "a green triangle on a white background"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the demo model's folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261121)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available()
                    else "cpu")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=32, help="clips per step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--budget", type=float, default=600.0,
                    help="seconds of training; stops early past it")
    ap.add_argument("--smoke", action="store_true",
                    help="a few steps, tiny batches")
    a = ap.parse_args()
    if a.smoke:
        a.steps, a.batch = 3, 2
    return a


def load_demo(folder, dev):
    """(cfg, tokenizer, clip, unet, vae) of the demo model's folder, frozen."""
    d = {}
    for part, rel in (("unet", "unet/diffusion_pytorch_model.safetensors"),
                      ("vae", "vae/diffusion_pytorch_model.safetensors"),
                      ("text_encoder", "text_encoder/model.safetensors")):
        tensors = st.load(os.path.join(folder, rel))[0]
        d.update({part + "/" + k: v for k, v in tensors.items()})
    vocab_size = d["text_encoder/text_model.embeddings.token_embedding"
                   ".weight"].shape[0]
    cfg = TD.demo_config(vocab_size)
    sd = R.from_diffusers(d, cfg)
    with open(os.path.join(folder, "tokenizer", "vocab.json")) as f:
        vocab = json.load(f)
    tok = R.Tokenizer(vocab, R.read_merges(
        os.path.join(folder, "tokenizer", "merges.txt")))
    parts = [R.load_clip(sd, cfg.clip, torch.float32),
             R.load_unet(sd, cfg.unet, torch.float32),
             R.load_vae(sd, cfg.vae, torch.float32)]
    for m in parts:
        m.to(dev).eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return (cfg, tok, *parts)


def clips(gen, n, frames, device):
    """n clips of `frames` frames ([n * frames, 3, 64, 64], frames inner),
    their captions, and each frame's true centre x ([n, frames])."""
    params, attrs = shapes.sample(gen, n)
    u = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    large = torch.tensor([a["size"] == "large" for a in attrs])
    lo, hi = shapes.SIZES[""]
    params[:, 1] = torch.where(large, lo + (hi - lo) * u[:, 0], params[:, 1])
    for a in attrs:
        a["size"] = "" if a["size"] == "large" else a["size"]
        a["place"], a["say_center"] = "center", False
    jit = (2 * u[:, 1:3] - 1) * shapes.POS_JITTER
    speed = SPEED[0] + (SPEED[1] - SPEED[0]) * u[:, 3]
    offs = torch.arange(frames, dtype=torch.float64) - (frames - 1) / 2
    cx = shapes.SIZE / 2 + jit[:, :1] + speed[:, None] * offs[None, :]
    p = params.repeat_interleave(frames, dim=0)
    p[:, 2] = cx.reshape(-1)
    p[:, 3] = (shapes.SIZE / 2 + jit[:, 1]).repeat_interleave(frames)
    return shapes.render(p, device), [shapes.caption(a) for a in attrs], cx


def zero_proj_out(mm):
    for name, p in mm.named_parameters():
        if ".proj_out." in name:
            torch.nn.init.zeros_(p)


def train(args, cfg, tok, clip, unet, vae, log):
    dev = args.device
    mm = R.MotionAdapter(cfg.unet, mid=True, max_len=MAX_LEN).to(dev)
    zero_proj_out(mm)
    params = list(mm.parameters())
    ema = [p.detach().clone().float() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99),
                            weight_decay=0.01)
    sched = R.Schedule()
    ac = torch.tensor(sched.alphas_cumprod, dtype=torch.float32, device=dev)
    captions = TD.Captions(tok, dev)
    empty = torch.tensor(tok(""), dtype=torch.long, device=dev)
    gen = torch.Generator().manual_seed(args.seed)
    dgen = torch.Generator(device=dev).manual_seed(args.seed + 1)
    n, f = args.batch, FRAMES
    losses, t0 = [], time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = TD.lr_at(step, args.steps, args.lr, 200)
        imgs, texts, _ = clips(gen, n, f, dev)
        ids = captions(texts)
        drop = torch.rand(n, generator=dgen, device=dev)
        ids = torch.where(drop[:, None] < TD.EMPTY_P, empty[None, :], ids)
        with torch.no_grad():
            lat = vae.encode(imgs).float()
            with TD.autocast(dev):
                ctx = clip(ids).float().repeat_interleave(f, dim=0)
        t = torch.randint(0, sched.n, (n,), generator=dgen, device=dev)
        t = t.repeat_interleave(f)
        a = ac[t][:, None, None, None]
        noise = torch.randn(lat.shape, generator=dgen, device=dev)
        xt = a.sqrt() * lat + (1 - a).sqrt() * noise
        with TD.autocast(dev):
            pred = R.unet_video(unet, mm, xt, t.float(), ctx, f).float()
        loss, per = TD.min_snr_loss(pred, noise, a)
        TD.update(opt, params, ema, loss, step)
        if step % 50 == 0 or step == args.steps - 1:
            losses.append([step, loss.item(), per.mean().item()])
        if step % 250 == 0:
            rate = (step + 1) / max(1e-9, time.time() - t0)
            log.say(f"step {step}/{args.steps} loss {loss.item():.4f} "
                    f"mse {per.mean().item():.4f} ({rate:.1f} it/s)")
        if time.time() - t0 > args.budget:
            log.say(f"budget reached at step {step}; stopping early")
            log.data["truncated"] = True
            break
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    log.data["training"] = {
        "steps": step + 1, "clips_per_step": n, "frames": f,
        "seconds": time.time() - t0,
        "loss": {"columns": ["step", "loss", "mse"], "rows": losses}}
    return mm.eval()


def centroids(frames_rgb, size):
    """Foreground centroid x of each RGB8 frame (None where none is found)."""
    out = []
    for rgb in frames_rgb:
        a = semantic.analyse(size, size, rgb)
        out.append(a["features"]["centroid"][0] if a["features"] else None)
    return out


def monotonic(xs, min_travel):
    return (all(x is not None for x in xs)
            and all(b > a for a, b in zip(xs, xs[1:]))
            and xs[-1] - xs[0] >= min_travel)


@torch.no_grad()
def evaluate(args, tok, clip, unet, vae, mm, log):
    """Sample clips with the reference; each frame's centroid."""
    dev, f = args.device, FRAMES
    results = []
    for i, prompt in enumerate(EVAL_PROMPTS[:1 if args.smoke else None]):
        cond, uncond = R.encode_prompt_pair(clip, tok, prompt, "")
        model = (lambda x, t, c: R.unet_video(unet, mm, x, t, c, f))
        lat = R.generate(model, R.Schedule(), "euler", cond, uncond, 7.0,
                         2 if args.smoke else 20, 7 + i, (f, 4, 16, 16),
                         dtype=torch.float32)
        img = vae.decode(lat.float())
        rgb = [np.floor(img[k].permute(1, 2, 0).cpu().double().numpy()
                        * 255 + 0.5).astype(np.uint8).tobytes()
               for k in range(f)]
        xs = centroids(rgb, shapes.SIZE)
        ok = monotonic(xs, 8.0)
        results.append({"prompt": prompt, "seed": 7 + i, "centroid_x": xs,
                        "monotonic": ok})
        log.say(f"{prompt!r} seed {7 + i}: centroid x "
                f"{[None if x is None else round(x, 1) for x in xs]} "
                f"{'monotonic' if ok else 'NOT monotonic'}")
    log.data["evaluation"] = results
    return results


def export(out, mm):
    tensors = {}
    for k, v in R.motion_state(mm).items():
        a = v.float().cpu().numpy()
        tensors[k] = ("F32" if k.endswith("pos_encoder.pe") else "F16", a)
    path = os.path.join(out, "demo-motion.safetensors")
    st.save(path, tensors, metadata={"format": "pt"}, exact=False)
    return path


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    TD.deterministic(args.seed)
    log = TD.Log(os.path.join(args.out, "train-log.json"))
    cfg, tok, clip, unet, vae = load_demo(args.model, args.device)
    mm_params = sum(p.numel() for p in
                    R.MotionAdapter(cfg.unet, mid=True).parameters())
    log.data.update({
        "seed": args.seed, "torch": torch.__version__,
        "python": platform.python_version(), "device": args.device,
        "device_name": (torch.cuda.get_device_name(0)
                        if args.device.startswith("cuda") else "cpu"),
        "args": vars(args), "truncated": False, "parameters": mm_params,
        "data": {"frames": FRAMES, "speed_px_per_frame": list(SPEED)}})
    log.say(f"motion module: {mm_params} parameters")
    mm = train(args, cfg, tok, clip, unet, vae, log)
    path = export(args.out, mm)
    log.say(f"exported {path} ({os.path.getsize(path)} bytes)")
    evaluate(args, tok, clip, unet, vae, mm, log)
    log.save()


if __name__ == "__main__":
    main()
