#!/usr/bin/env python3
"""Train gpuhost's demo model: a small Stable Diffusion 1.x model (the
reference's own CLIP text encoder, UNet and VAE classes, sd_ref.py) on the
procedural shapes of shapes.py, in one run on one GPU.

    python3 tests/reference/train_demo.py --out DIR          # on a GPU
    python3 tests/reference/train_demo.py --out DIR --smoke  # a CPU check

Phases, all from one seed:
  1. tokenizer: CLIP byte-level BPE trained on the caption grammar's words
     (vocab.json, merges.txt in the HF layout, read unchanged by gpuhost);
  2. VAE (f = 4: 64x64x3 <-> 16x16x4), reconstruction + a small KL term;
     then its latent scale is folded into quant_conv/post_quant_conv so
     that SD's fixed 0.18215 gives latents of unit variance;
  3. text encoder and UNet together: epsilon prediction on SD's
     scaled_linear schedule (1000 steps), min-SNR-5 weighting, 10% empty
     captions for classifier-free guidance, bf16 autocast, an EMA of the
     weights (the exported weights).
The result is a diffusers-layout folder (the same layout and loader as any
SD 1.x diffusers model) plus train-log.json (config, losses, timings).

Determinism: all random draws come from seeded generators; cuDNN and
cuBLAS are put in their deterministic modes. A run that hits --budget
stops early and says so in the log (then it is not reproducible).
"""

import argparse
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sd_ref as R  # noqa: E402
import shapes  # noqa: E402
import st  # noqa: E402
import make_fixtures as MF  # noqa: E402

TOKENIZER_MERGES = 2000   # at most; stops when every word is one token
EMPTY_P = 0.1             # share of empty captions (for CFG)
MIN_SNR = 5.0


def demo_config(vocab_size):
    return R.SDConfig(
        clip=R.ClipConfig(vocab_size=vocab_size, width=128, layers=2,
                          positions=77, mlp_ratio=4),
        unet=R.UNetConfig(in_channels=4, out_channels=4, model_channels=64,
                          channel_mult=(1, 2, 2), attention_levels=(1, 2),
                          num_res_blocks=1, transformer_depth=1,
                          context_dim=128, linear_proj=False),
        vae=R.VAEConfig(base_channels=32, channel_mult=(1, 2, 2),
                        num_res_blocks=1, latent_channels=4))


# Storage dtypes in the shipped folder.
DTYPES = {"unet": "F16", "text_encoder": "F16", "vae": "F16"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261121)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available()
                    else "cpu")
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-batch", type=int, default=128)
    ap.add_argument("--unet-steps", type=int, default=5000)
    ap.add_argument("--unet-batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--budget", type=float, default=560.0,
                    help="seconds; training stops early past it")
    ap.add_argument("--check-determinism", action="store_true",
                    help="first train a short run twice, compare weights")
    ap.add_argument("--smoke", action="store_true",
                    help="a few steps of everything, tiny batches")
    a = ap.parse_args()
    if a.smoke:
        a.vae_steps, a.vae_batch, a.unet_steps, a.unet_batch = 4, 4, 4, 4
    return a


class Log:
    def __init__(self, path):
        self.path = path
        self.t0 = time.time()
        self.data = {"phases": {}, "events": []}

    def elapsed(self):
        return time.time() - self.t0

    def say(self, msg):
        line = f"[{self.elapsed():7.1f}s] {msg}"
        print(line, flush=True)
        self.data["events"].append(line)

    def save(self):
        with open(self.path, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
            f.write("\n")


def deterministic(seed):
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_tokenizer():
    vocab, merges = MF.train_bpe(shapes.vocabulary_corpus(), TOKENIZER_MERGES)
    tok = R.Tokenizer(vocab, merges)
    words = set()
    for line in shapes.vocabulary_corpus():
        words.update(R.pretokenize(line))
    split = sorted(w for w in words if len(tok.encode(w)) != 1)
    return vocab, merges, tok, split


class Captions:
    """Caption -> 77 token ids, cached."""

    def __init__(self, tok, device):
        self.tok, self.device, self.cache = tok, device, {}

    def __call__(self, texts):
        rows = []
        for t in texts:
            ids = self.cache.get(t)
            if ids is None:
                ids = self.cache[t] = self.tok(t)
            rows.append(ids)
        ids = torch.tensor(rows, dtype=torch.long)
        if self.device.startswith("cuda"):
            return ids.pin_memory().to(self.device, non_blocking=True)
        return ids


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def autocast(device):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ------------------------------------------------------------------- VAE


def train_vae(args, cfg, log, gen):
    dev = args.device
    vae = R.AutoencoderKL(cfg.vae).to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, betas=(0.9, 0.99),
                            weight_decay=0.0)
    losses = []
    t0 = time.time()
    steps = args.vae_steps
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3, 200)
        imgs, _, _ = shapes.batch(gen, args.vae_batch, dev)
        x = 2 * imgs - 1
        with autocast(dev):
            moments = vae.quant_conv(vae.encoder(x))
            mean, logvar = moments.float().chunk(2, dim=1)
            logvar = logvar.clamp(-30, 20)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            rec = vae.decoder(vae.post_quant_conv(z)).float()
        mse = F.mse_loss(rec, x)
        l1 = F.l1_loss(rec, x)
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
        loss = mse + 0.5 * l1 + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append([step, mse.item(), l1.item(), kl.item()])
        if step % 500 == 0:
            log.say(f"vae step {step}/{steps} mse {mse.item():.5f} "
                    f"l1 {l1.item():.4f} kl {kl.item():.2f}")
        if log.elapsed() > args.budget * 0.3:
            log.say(f"vae: budget reached at step {step}; stopping early")
            log.data["truncated"] = True
            break
    log.data["phases"]["vae"] = {
        "steps": step + 1, "batch": args.vae_batch, "seconds":
        time.time() - t0, "loss": {"columns": ["step", "mse", "l1", "kl"],
                                   "rows": losses}}
    return vae.eval()


@torch.no_grad()
def fold_latent_scale(vae, gen, dev, log, n):
    """Scale the latent so that mean * 0.18215 has unit variance."""
    imgs, _, _ = shapes.batch(gen, n, dev)
    mean = vae.quant_conv(vae.encoder(2 * imgs - 1))[:, :4].float()
    std = float(mean.std())
    k = 1.0 / (R.LATENT_SCALE * std)
    z = vae.cfg.latent_channels
    vae.quant_conv.weight[:z] *= k
    vae.quant_conv.bias[:z] *= k
    vae.quant_conv.bias[z:] += 2 * math.log(k)
    vae.post_quant_conv.weight /= k
    lat = vae.encode(imgs)
    rec = vae.decode(lat)
    psnr = float(-10 * torch.log10(F.mse_loss(rec, imgs)))
    log.say(f"latent std {std:.4f} -> scale {k:.4f}; scaled latent std "
            f"{float(lat.std()):.4f} mean {float(lat.mean()):.4f}; "
            f"reconstruction PSNR {psnr:.2f} dB")
    return {"raw_std": std, "fold": k, "latent_std": float(lat.std()),
            "latent_mean": float(lat.mean()), "psnr_db": psnr}


# ------------------------------------------------------------ text + UNet


def min_snr_loss(pred, noise, a):
    """Epsilon prediction's MSE per item, min-SNR-5 weighted (a: the items'
    alphas_cumprod, [B, 1, 1, 1]) -> (loss, the per-item MSE)."""
    snr = (a / (1 - a)).reshape(-1)
    w = torch.clamp(snr, max=MIN_SNR) / snr
    per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
    return (w * per).mean(), per


def update(opt, params, ema, loss, step):
    """One optimiser step on |loss| (gradients clipped to norm 1), then the
    EMA of the weights (decay min(0.999, (1 + step) / (10 + step)))."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    d = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_mul_(ema, d)
        torch._foreach_add_(ema, [p.detach().float() for p in params],
                            alpha=1 - d)


def train_unet(args, cfg, vae, tok, log, gen):
    dev = args.device
    clip = R.CLIPTextModel(cfg.clip).to(dev)
    unet = R.UNetModel(cfg.unet).to(dev)
    params = list(clip.parameters()) + list(unet.parameters())
    ema = [p.detach().clone().float() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99),
                            weight_decay=0.01)
    sched = R.Schedule()
    ac = torch.tensor(sched.alphas_cumprod, dtype=torch.float32, device=dev)
    captions = Captions(tok, dev)
    empty = torch.tensor(tok(""), dtype=torch.long, device=dev)
    dgen = torch.Generator(device=dev).manual_seed(args.seed + 1)
    losses = []
    steps = args.unet_steps
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args.lr, 500)
        imgs, texts, _ = shapes.batch(gen, args.unet_batch, dev)
        ids = captions(texts)
        drop = torch.rand(args.unet_batch, generator=dgen, device=dev)
        ids = torch.where(drop[:, None] < EMPTY_P, empty[None, :], ids)
        with torch.no_grad():
            lat = vae.encode(imgs).float()
        t = torch.randint(0, sched.n, (args.unet_batch,), generator=dgen,
                          device=dev)
        a = ac[t][:, None, None, None]
        noise = torch.randn(lat.shape, generator=dgen, device=dev)
        xt = a.sqrt() * lat + (1 - a).sqrt() * noise
        with autocast(dev):
            ctx = clip(ids)
            pred = unet(xt, t.float(), ctx).float()
        loss, per = min_snr_loss(pred, noise, a)
        update(opt, params, ema, loss, step)
        if step % 50 == 0 or step == steps - 1:
            losses.append([step, loss.item(), per.mean().item()])
        if step % 500 == 0:
            rate = (step + 1) / max(1e-9, time.time() - t0)
            log.say(f"unet step {step}/{steps} loss {loss.item():.4f} "
                    f"mse {per.mean().item():.4f} ({rate:.1f} it/s)")
        if log.elapsed() > args.budget:
            log.say(f"unet: budget reached at step {step}; stopping early")
            log.data["truncated"] = True
            break
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    log.data["phases"]["unet"] = {
        "steps": step + 1, "batch": args.unet_batch,
        "seconds": time.time() - t0, "captions_seen": len(captions.cache),
        "loss": {"columns": ["step", "loss", "mse"], "rows": losses}}
    return clip.eval(), unet.eval()


# ---------------------------------------------------------------- export


def original_dict(clip, unet, vae):
    return {k: v.float().cpu().numpy()
            for k, v in R.original_state(clip, unet, vae).items()}


def export(out, cfg, vocab, merges, clip, unet, vae):
    d = R.to_diffusers(original_dict(clip, unet, vae), cfg)
    files = {"unet": "unet/diffusion_pytorch_model.safetensors",
             "vae": "vae/diffusion_pytorch_model.safetensors",
             "text_encoder": "text_encoder/model.safetensors"}
    sizes = {}
    for part, rel in files.items():
        prefix = part + "/"
        tensors = {k[len(prefix):]: (DTYPES[part], v)
                   for k, v in d.items() if k.startswith(prefix)}
        os.makedirs(os.path.join(out, part), exist_ok=True)
        path = os.path.join(out, rel)
        st.save(path, tensors, metadata={"format": "pt"}, exact=False)
        sizes[rel] = os.path.getsize(path)
    MF.write_diffusers_configs(out, cfg)
    for rel, key, value in (("unet/config.json", "sample_size", 16),
                            ("vae/config.json", "sample_size", 64)):
        path = os.path.join(out, rel)
        with open(path) as f:
            obj = json.load(f)
        obj[key] = value
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    MF.write_tokenizer(os.path.join(out, "tokenizer"), vocab, merges)
    return sizes


def count(module):
    return sum(p.numel() for p in module.parameters())


def train(args, log):
    """Every phase from args.seed: (cfg, vocab, merges, clip, unet, vae)."""
    deterministic(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    vocab, merges, tok, split = make_tokenizer()
    cfg = demo_config(len(vocab))
    log.data.update({
        "seed": args.seed, "config": cfg.to_json(), "torch": torch.__version__,
        "python": platform.python_version(), "device": args.device,
        "device_name": (torch.cuda.get_device_name(0)
                        if args.device.startswith("cuda") else "cpu"),
        "tokenizer": {"vocab": len(vocab), "merges": len(merges),
                      "words_split": split},
        "args": vars(args), "truncated": False})
    log.say(f"tokenizer: {len(vocab)} tokens, {len(merges)} merges, "
            f"words not single tokens: {split}")
    log.say(f"parameters: text encoder {count(R.CLIPTextModel(cfg.clip))}, "
            f"UNet {count(R.UNetModel(cfg.unet))}, VAE "
            f"{count(R.AutoencoderKL(cfg.vae))}")
    vae = train_vae(args, cfg, log, gen)
    log.data["latent"] = fold_latent_scale(
        vae, gen, args.device, log, 16 if args.smoke else 1024)
    for p in vae.parameters():
        p.requires_grad_(False)
    clip, unet = train_unet(args, cfg, vae, tok, log, gen)
    return cfg, vocab, merges, clip, unet, vae


def determinism_check(args, log):
    """Trains a short run twice from the same seed; the weights must be
    bit-identical."""
    short = argparse.Namespace(**vars(args))
    short.vae_steps, short.unet_steps = 40, 40
    short.vae_batch, short.unet_batch = 32, 32
    runs = []
    for _ in range(2):
        quiet = Log(os.devnull)
        _, _, _, clip, unet, vae = train(short, quiet)
        runs.append(original_dict(clip, unet, vae))
    same = all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    log.say(f"determinism check (2 x {short.vae_steps} VAE + "
            f"{short.unet_steps} UNet steps, batch 32): weights "
            f"{'bit-identical' if same else 'DIFFER'}")
    return same


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    log = Log(os.path.join(args.out, "train-log.json"))
    same = determinism_check(args, log) if args.check_determinism else None
    cfg, vocab, merges, clip, unet, vae = train(args, log)
    log.data["determinism_check"] = same
    sizes = export(args.out, cfg, vocab, merges, clip, unet, vae)
    log.data["files"] = sizes
    log.say(f"exported {sum(sizes.values())} bytes of weights: {sizes}")
    log.save()


if __name__ == "__main__":
    main()
