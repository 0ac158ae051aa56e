#!/usr/bin/python3
"""Generate the tiny Stable Diffusion fixtures the C runtime is tested
against (see README.md in this directory).

    /usr/bin/python3 tests/reference/make_fixtures.py --out tests/data/sd-tiny

Everything is deterministic: weights and inputs come from NumPy's legacy
RandomState (whose streams are frozen), expected outputs are computed in
float64 and stored as float32.
"""

import argparse
import collections
import dataclasses
import hashlib
import json
import math
import os
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sd_ref as R  # noqa: E402
import st  # noqa: E402
import check_layouts  # noqa: E402

# ------------------------------------------------------------------ config

TOKENIZER_MERGES = 200  # at most; training stops when the corpus runs dry


def tiny_config(vocab_size):
    """The committed tiny model. The brief's first choice (UNet mult 1,2,2;
    VAE mult 1,1,2,2; linear UNet mult 1,2) comes to about 30 MB; these are
    the smallest sizes that still exercise every SD1.5 code path (see
    README.md)."""
    return R.SDConfig(
        clip=R.ClipConfig(vocab_size=vocab_size, width=64, layers=3,
                          positions=77, mlp_ratio=4),
        unet=R.UNetConfig(in_channels=4, out_channels=4, model_channels=32,
                          channel_mult=(1, 1, 2), attention_levels=(0, 1),
                          num_res_blocks=1, transformer_depth=1,
                          context_dim=64, linear_proj=False),
        vae=R.VAEConfig(base_channels=32, channel_mult=(1, 1, 1, 2),
                        num_res_blocks=1, latent_channels=4))


# SD2-style UNet (linear proj_in/proj_out, heads = channels / 64).
LINEAR_UNET = R.UNetConfig(in_channels=4, out_channels=4, model_channels=64,
                           channel_mult=(1,), attention_levels=(0,),
                           num_res_blocks=1, transformer_depth=1,
                           context_dim=64, linear_proj=True)

# Storage dtypes of each part in each layout.
SINGLE_DTYPES = {"unet": "F16", "vae": "BF16", "clip": "F16"}
DIFFUSERS_DTYPES = {"unet": "BF16", "vae": "F16", "clip": "F32"}
LINEAR_DTYPE = "F16"

PROMPT = "a red circle on a blue background"
NEGATIVE = ""
WEIGHTED_PROMPT = "a (red:1.3) circle on a [blue] background, ((top left))"
CFG = 7.5
STEPS = 3
SEED = 1234
IMG2IMG = {"sampler": "euler", "steps": 4, "strength": 0.5, "seed": 99}
LATENT_SHAPE = (1, 4, 8, 8)  # 64x64 images
UNET_T = (999.0, 421.37)

# ------------------------------------------------------------- tokenizer

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "black",
           "white", "gray", "pink"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "ring", "cross"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "center"]
SIZES = ["small", "large", "tiny", "big"]


def caption_corpus():
    """A few hundred captions of coloured shapes, deterministic."""
    rs = np.random.RandomState(7)
    lines = []
    for colour in COLOURS:
        for shape in SHAPES:
            bg = COLOURS[rs.randint(len(COLOURS))]
            place = PLACES[rs.randint(len(PLACES))]
            lines.append(f"a {colour} {shape} on a {bg} background, {place}")
            size = SIZES[rs.randint(len(SIZES))]
            lines.append(f"a {size} {colour} {shape} in the {place}")
    for n in range(2, 10):
        c1, c2 = COLOURS[n % 10], COLOURS[(3 * n) % 10]
        s1, s2 = SHAPES[n % 7], SHAPES[(2 * n) % 7]
        lines.append(f"{n} {c1} {s1}s and {n + 1} {c2} {s2}s")
    return lines


def train_bpe(corpus, max_merges):
    """Plain BPE over CLIP pre-tokens with `</w>` word ends. Ties go to the
    lexicographically smallest pair; a pair whose merged string is already a
    token is skipped (CLIP's vocab has one new token per merge)."""
    b2u = R.bytes_to_unicode()
    words = collections.Counter()
    for line in corpus:
        for tok in R.pretokenize(line):
            syms = [b2u[b] for b in tok.encode("utf-8")]
            syms[-1] += "</w>"
            words[tuple(syms)] += 1
    base = list(b2u.values())
    vocab = base + [s + "</w>" for s in base]
    known = set(vocab)
    merges = []
    while len(merges) < max_merges:
        pairs = collections.Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        cands = sorted((-c, p) for p, c in pairs.items()
                       if p[0] + p[1] not in known and c >= 2)
        if not cands:
            break
        best = cands[0][1]
        merged_tok = best[0] + best[1]
        merges.append(best)
        vocab.append(merged_tok)
        known.add(merged_tok)
        new_words = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged_tok)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += c
        words = new_words
    vocab += [R.BOS_TEXT, R.EOS_TEXT]
    return {t: i for i, t in enumerate(vocab)}, merges


def write_tokenizer(folder, vocab, merges):
    """HF layout: vocab.json pretty-printed with sorted keys, merges.txt with
    the `#version: 0.2` line."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(vocab, indent=2, sort_keys=True,
                           ensure_ascii=False) + "\n")
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


# ---------------------------------------------------------------- weights


def bf16_fp16_exact(a):
    """Zero |w| < 2^-14 (fp16 subnormals) and round to bf16: the result is
    exactly representable in bf16, fp16 and fp32."""
    a = np.where(np.abs(a) < 2.0 ** -14, 0.0, a).astype(np.float32)
    a = st.round_to_bf16(a)
    assert np.array_equal(a.astype(np.float16).astype(np.float32), a)
    return a


def random_weights(module, seed, gains=None):
    """Random parameters for every entry of `module.state_dict()`, in sorted
    name order from RandomState(seed): weights N(0, 1/fan_in) (times an
    optional per-name gain), biases N(0, 0.02^2), norm scales 1 + N(0,
    0.1^2), norm shifts N(0, 0.05^2), embeddings N(0, 1) / N(0, 0.2^2)."""
    gains = gains or {}
    rs = np.random.RandomState(seed)
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    norms = {n for n, m in module.named_modules() if isinstance(m, norm_types)}
    out = {}
    for name, p in sorted(module.state_dict().items()):
        shape = tuple(p.shape)
        z = rs.standard_normal(shape)
        owner, _, leaf = name.rpartition(".")
        if owner in norms:
            v = 1.0 + 0.1 * z if leaf == "weight" else 0.05 * z
        elif "token_embedding" in name:
            v = z
        elif "position_embedding" in name:
            v = 0.2 * z
        elif leaf == "bias":
            v = 0.02 * z
        else:
            fan_in = int(np.prod(shape[1:]))
            v = z / math.sqrt(fan_in)
        for key, g in gains.items():
            if name.startswith(key):
                v = v * g
        out[name] = bf16_fp16_exact(v)
    return out


# Output layers scaled so that the VAE decodes to mostly unclipped colours.
VAE_GAINS = {"decoder.conv_out.": 0.5}


def make_checkpoint(cfg):
    """The tiny model's parameters in original single-file naming."""
    sd = {}
    parts = [(R.CLIPTextModel(cfg.clip), R.CLIP_PREFIX, 1, None),
             (R.UNetModel(cfg.unet), R.UNET_PREFIX, 2, None),
             (R.AutoencoderKL(cfg.vae), R.VAE_PREFIX, 3, VAE_GAINS)]
    for module, prefix, seed, gains in parts:
        for k, v in random_weights(module, seed, gains).items():
            sd[prefix + k] = v
    return sd


def part_of(name):
    if name.startswith((R.UNET_PREFIX, "unet/")):
        return "unet"
    if name.startswith((R.VAE_PREFIX, "vae/")):
        return "vae"
    return "clip"


def write_single(path, sd, positions):
    tensors = {k: (SINGLE_DTYPES[part_of(k)], v) for k, v in sd.items()}
    tensors[R.CLIP_PREFIX + "text_model.embeddings.position_ids"] = (
        "I64", np.arange(positions, dtype=np.int64)[None])
    tensors["model_ema.decay"] = ("F32", np.array([0.9999], np.float32))
    st.save(path, tensors, metadata={"format": "pt"})


DIFFUSERS_FILES = {"unet": "unet/diffusion_pytorch_model.safetensors",
                   "vae": "vae/diffusion_pytorch_model.safetensors",
                   "clip": "text_encoder/model.safetensors"}


def write_diffusers(folder, d, cfg):
    """Diffusers folder: one file per part, names without the folder."""
    for part, rel in DIFFUSERS_FILES.items():
        prefix = rel.split("/")[0] + "/"
        tensors = {k[len(prefix):]: (DIFFUSERS_DTYPES[part], v)
                   for k, v in d.items() if k.startswith(prefix)}
        os.makedirs(os.path.join(folder, prefix), exist_ok=True)
        st.save(os.path.join(folder, rel), tensors,
                metadata={"format": "pt"})
    write_diffusers_configs(folder, cfg)


def write_diffusers_configs(folder, cfg):
    """The JSON files of a diffusers StableDiffusionPipeline folder (not
    needed by a shape-driven loader, there for realism)."""
    u, v, c = cfg.unet, cfg.vae, cfg.clip
    last = u.levels - 1
    configs = {
        "model_index.json": {
            "_class_name": "StableDiffusionPipeline",
            "feature_extractor": [None, None],
            "safety_checker": [None, None],
            "requires_safety_checker": False,
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]},
        "scheduler/scheduler_config.json": {
            "_class_name": "PNDMScheduler", "beta_start": 0.00085,
            "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "set_alpha_to_one": False,
            "skip_prk_steps": True, "steps_offset": 1,
            "clip_sample": False, "prediction_type": "epsilon"},
        "unet/config.json": {
            "_class_name": "UNet2DConditionModel", "act_fn": "silu",
            "attention_head_dim": 8,
            "block_out_channels": [u.model_channels * m
                                   for m in u.channel_mult],
            "cross_attention_dim": u.context_dim,
            "down_block_types": [
                "CrossAttnDownBlock2D" if i in u.attention_levels
                else "DownBlock2D" for i in range(u.levels)],
            "up_block_types": [
                "CrossAttnUpBlock2D" if last - i in u.attention_levels
                else "UpBlock2D" for i in range(u.levels)],
            "downsample_padding": 1, "flip_sin_to_cos": True,
            "freq_shift": 0, "in_channels": u.in_channels,
            "out_channels": u.out_channels,
            "layers_per_block": u.num_res_blocks, "norm_eps": 1e-05,
            "norm_num_groups": 32, "sample_size": 8,
            "use_linear_projection": u.linear_proj},
        "vae/config.json": {
            "_class_name": "AutoencoderKL", "act_fn": "silu",
            "block_out_channels": [v.base_channels * m
                                   for m in v.channel_mult],
            "down_block_types": ["DownEncoderBlock2D"] * v.levels,
            "up_block_types": ["UpDecoderBlock2D"] * v.levels,
            "in_channels": v.image_channels,
            "out_channels": v.image_channels,
            "latent_channels": v.latent_channels,
            "layers_per_block": v.num_res_blocks, "norm_num_groups": 32,
            "sample_size": 64, "scaling_factor": R.LATENT_SCALE},
        "text_encoder/config.json": {
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "hidden_act": "quick_gelu", "hidden_size": c.width,
            "intermediate_size": c.width * c.mlp_ratio,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": c.positions,
            "num_attention_heads": c.heads,
            "num_hidden_layers": c.layers, "vocab_size": c.vocab_size,
            "bos_token_id": c.vocab_size - 2,
            "eos_token_id": c.vocab_size - 1, "torch_dtype": "float32"},
    }
    for rel, obj in configs.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


# ----------------------------------------------------------------- inputs


def test_image(h=64, w=64):
    """A red disc on a blue-ish gradient, top left, as k/255 values."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([0.1 + 0.2 * xx / w, 0.2 + 0.1 * yy / h,
                    0.7 - 0.2 * yy / h])
    disc = (yy - 0.3 * h) ** 2 + (xx - 0.3 * w) ** 2 < (0.2 * h) ** 2
    img[:, disc] = np.array([0.9, 0.1, 0.1])[:, None]
    img += 0.03 * np.random.RandomState(11).standard_normal(img.shape)
    u8 = np.clip(np.round(img * 255), 0, 255)
    return (u8 / 255.0).astype(np.float32)[None]


def make_inputs(cfg):
    rs = np.random.RandomState(100)
    f32 = np.float32
    return {
        "unet.x": rs.standard_normal((2,) + LATENT_SHAPE[1:]).astype(f32),
        "unet.t": np.array(UNET_T, f32),
        "unet.context": rs.standard_normal(
            (2, 77, cfg.unet.context_dim)).astype(f32),
        "unet_linear.x": rs.standard_normal((2,) + LATENT_SHAPE[1:])
        .astype(f32),
        "unet_linear.t": np.array(UNET_T, f32),
        "unet_linear.context": rs.standard_normal(
            (2, 77, LINEAR_UNET.context_dim)).astype(f32),
        "vae.latent": rs.standard_normal(LATENT_SHAPE).astype(f32),
        "vae.image": test_image(),
    }


def long_prompt():
    """More than 75 tiny tokens, with commas: two chunks."""
    parts = []
    for i in range(12):
        parts.append(f"a {SIZES[i % 4]} {COLOURS[i % 10]} {SHAPES[i % 7]} "
                     f"on a {COLOURS[(i + 3) % 10]} background")
    return ", ".join(parts)


# ----------------------------------------------------------- computation


def compute(models, tok, inputs, dtype):
    """All expected outputs, computed in `dtype`. Returns {name: array}."""
    clip, unet, unet_lin, vae = models
    sched = R.Schedule()
    out = {}

    def t(name):
        return torch.from_numpy(inputs[name]).to(dtype)

    with torch.no_grad():
        ids = torch.tensor([tok(PROMPT), tok(NEGATIVE)])
        out["text.ids"] = ids.numpy().astype(np.int32)
        out["text.hidden"] = clip(ids, 1)
        out["text.hidden_skip2"] = clip(ids, 2)

        for key, text in (("prompt.weighted", WEIGHTED_PROMPT),
                          ("prompt.long", long_prompt())):
            chunks = R.prompt_chunks(tok, text)
            out[key + ".ids"] = np.array([c[0] for c in chunks], np.int32)
            out[key + ".weights"] = np.array([c[1] for c in chunks],
                                             np.float32)
            out[key + ".hidden"] = R.encode_prompt(clip, tok, text)

        out["unet.out"] = unet(t("unet.x"), t("unet.t"), t("unet.context"))
        out["unet_linear.out"] = unet_lin(
            t("unet_linear.x"), t("unet_linear.t"), t("unet_linear.context"))
        out["vae.decoded"] = vae.decode_raw(t("vae.latent"))
        out["vae.encoded"] = vae.encode(t("vae.image"))

        # Samplers start from the stored (float32) text encoder outputs.
        hidden = torch.from_numpy(inputs["text.hidden"]).to(dtype)
        cond, uncond = hidden[0:1], hidden[1:2]
        for s in R.SAMPLERS:
            if s == "ddim":
                out["sample.ddim.timesteps"] = R.ddim_timesteps(STEPS) \
                    .astype(np.float64)
            else:
                out[f"sample.{s}.sigmas"] = R.get_sigmas(sched, s, STEPS)
            out[f"sample.{s}.latent"] = R.generate(
                unet, sched, s, cond, uncond, CFG, STEPS, SEED,
                LATENT_SHAPE, dtype=dtype)
        for s in ("euler", "ddim"):
            out[f"sample.{s}_v.latent"] = R.generate(
                unet, sched, s, cond, uncond, CFG, STEPS, SEED,
                LATENT_SHAPE, prediction="v", dtype=dtype)

        init = torch.from_numpy(inputs["vae.encoded"]).to(dtype)
        n, k = IMG2IMG["steps"], R.img2img_steps(IMG2IMG["steps"],
                                                 IMG2IMG["strength"])
        out["img2img.euler.sigmas"] = R.get_sigmas(sched, "euler", n)[n - k:]
        for s in ("euler", "ddim"):
            out[f"img2img.{s}.latent"] = R.generate(
                unet, sched, s, cond, uncond, CFG, n, IMG2IMG["seed"],
                LATENT_SHAPE, init=init, strength=IMG2IMG["strength"],
                dtype=dtype)

        # The whole txt2img pipeline from the prompt text.
        c, u = R.encode_prompt_pair(clip, tok, PROMPT, NEGATIVE)
        lat = R.generate(unet, sched, "euler", c, u, CFG, STEPS, SEED,
                         LATENT_SHAPE, dtype=dtype)
        out["txt2img.latent"] = lat
        out["txt2img.image"] = R.to_rgb8(vae.decode(lat))

    out["schedule.alphas_cumprod"] = sched.alphas_cumprod
    out["schedule.sigmas"] = sched.sigmas
    for seed, stream in ((SEED, 0), (SEED, 1), (IMG2IMG["seed"], 0)):
        out[f"noise.seed{seed}.stream{stream}"] = R.noise(
            seed, stream, LATENT_SHAPE[1:])[None]
    return {k: (v.detach().numpy() if torch.is_tensor(v) else np.asarray(v))
            for k, v in out.items()}


def load_models(sd, sd_lin, cfg, dtype):
    return (R.load_clip(sd, cfg.clip, dtype), R.load_unet(sd, cfg.unet, dtype),
            R.load_unet(sd_lin, LINEAR_UNET, dtype),
            R.load_vae(sd, cfg.vae, dtype))


def stored_dtype(name, arr):
    if arr.dtype == np.uint8:
        return "U8"
    if arr.dtype in (np.int32, np.int64):
        return "I32"
    return "F32"


# Suggested tolerances for an fp32 implementation, relative to each
# output's largest magnitude: one model pass, and sampler results (three
# steps at cfg 7.5 amplify rounding). They do not depend on the machine;
# make_fixtures checks that this reference's own float32 run stays at least
# 5x inside them.
REL_TOL_MODEL = 2e-5
REL_TOL_SAMPLER = 1e-4


def tolerances(ref, f32):
    """{name: {max_abs, atol_f32}} for the float outputs, checked against
    the float32 run; prints the measured float32 deviations."""
    tol = {}
    print("float32 reference vs float64 (max abs deviation / suggested "
          "atol):")
    for k, v in ref.items():
        if v.dtype.kind != "f" or k.startswith(("schedule.", "noise.")):
            continue
        a = np.asarray(v, np.float64)
        err = float(np.max(np.abs(a - np.asarray(f32[k], np.float64))))
        scale = float(np.max(np.abs(a)))
        rel = REL_TOL_SAMPLER if k.startswith(
            ("sample.", "img2img.", "txt2img.")) else REL_TOL_MODEL
        atol = float(f"{rel * scale:.2g}")
        assert 5 * err <= atol, (k, err, atol)
        print(f"  {k:32s} {err:9.3g} / {atol:g}")
        tol[k] = {"max_abs": float(f"{scale:.4g}"), "atol_f32": atol}
    img = np.abs(ref["txt2img.image"].astype(int)
                 - f32["txt2img.image"].astype(int)).max()
    print(f"  {'txt2img.image':32s} {img:9d} / 1")
    assert img <= 1
    tol["txt2img.image"] = {"atol_f32": 1}
    return tol


# What each fixture tensor is (prefix match, first hit wins).
DESCRIPTIONS = [
    ("text.ids", "token ids: prompt, negative (BOS, tokens, EOS padding)"),
    ("text.hidden_skip2", "text encoder output, clip skip 2"),
    ("text.hidden", "text encoder output, clip skip 1 (row 0 prompt = "
     "sampler cond, row 1 negative = uncond)"),
    ("prompt.weighted.ids", "A1111 chunk ids of prompts.weighted"),
    ("prompt.weighted.weights", "per-token emphasis weights"),
    ("prompt.weighted.hidden", "weighted, mean-restored encoding"),
    ("prompt.long.ids", "two chunks (comma backtrack) of prompts.long"),
    ("prompt.long.weights", "per-token weights (all 1)"),
    ("prompt.long.hidden", "chunks encoded and concatenated (2 x 77)"),
    ("unet.out", "UNet(unet.x, unet.t, unet.context), eps"),
    ("unet.", "UNet input"),
    ("unet_linear.out", "linear-projection UNet output"),
    ("unet_linear.", "linear-projection UNet input"),
    ("vae.latent", "latent (0.18215 scale) to decode"),
    ("vae.decoded", "raw decoder output of vae.latent, before the clamp"),
    ("vae.image", "RGB image in [0, 1] (k/255 values) to encode"),
    ("vae.encoded", "encoder mean of vae.image times 0.18215"),
    ("schedule.", "noise schedule, t = 0..999"),
    ("noise.", "the doc's noise generator, [1, 4, 8, 8]"),
    ("sample.ddim.timesteps", "DDIM timesteps"),
    ("sample.", "sampler run: sigmas (with the final 0) or final latent"),
    ("img2img.euler.sigmas", "sigmas actually run (tail of the 4-step "
     "schedule)"),
    ("img2img.", "img2img final latent"),
    ("txt2img.latent", "full pipeline latent"),
    ("txt2img.image", "full pipeline RGB8 image, HWC"),
]


def describe(name):
    return next(d for p, d in DESCRIPTIONS if name.startswith(p))


# --------------------------------------------------------------------- main


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "data", "sd-tiny"))
    ap.add_argument("--skip-check", action="store_true",
                    help="do not run check_layouts afterwards")
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)  # bitwise-stable CPU reductions

    # Tokenizer.
    vocab, merges = train_bpe(caption_corpus(), TOKENIZER_MERGES)
    diff_dir = os.path.join(out, "sd-tiny-diffusers")
    write_tokenizer(os.path.join(diff_dir, "tokenizer"), vocab, merges)
    tok = R.Tokenizer(vocab, merges)
    cfg = tiny_config(len(vocab))

    # Weights, the three files.
    sd = make_checkpoint(cfg)
    write_single(os.path.join(out, "sd-tiny.safetensors"), sd,
                 cfg.clip.positions)
    write_diffusers(diff_dir, R.to_diffusers(sd, cfg), cfg)
    lin = {R.UNET_PREFIX + k: v for k, v in random_weights(
        R.UNetModel(LINEAR_UNET), 4).items()}
    st.save(os.path.join(out, "sd-tiny-linear.safetensors"),
            {k: (LINEAR_DTYPE, v) for k, v in lin.items()},
            metadata={"format": "pt"})

    # Expected outputs: float64, and float32 to measure tolerances.
    inputs = make_inputs(cfg)
    m64 = load_models(sd, lin, cfg, torch.float64)
    with torch.no_grad():
        hidden = m64[0](torch.tensor([tok(PROMPT), tok(NEGATIVE)]), 1)
        init = m64[3].encode(torch.from_numpy(inputs["vae.image"]).double())
    inputs["text.hidden"] = hidden.numpy().astype(np.float32)
    inputs["vae.encoded"] = init.numpy().astype(np.float32)
    ref = compute(m64, tok, inputs, torch.float64)
    f32 = compute(load_models(sd, lin, cfg, torch.float32), tok, inputs,
                  torch.float32)

    tensors = {k: ("F32", v.astype(np.float32)) for k, v in inputs.items()
               if k not in ("text.hidden", "vae.encoded")}
    for k, v in ref.items():
        dt = stored_dtype(k, v)
        if dt == "U8":
            tensors[k] = (dt, v)
        elif dt == "I32":
            tensors[k] = (dt, v.astype(np.int32))
        else:
            tensors[k] = (dt, v.astype(np.float32))
    st.save(os.path.join(out, "expected.safetensors"), tensors, exact=False)

    n_i2i = R.img2img_steps(IMG2IMG["steps"], IMG2IMG["strength"])
    settings = {
        "generator": "tests/reference/make_fixtures.py",
        "config": cfg.to_json(),
        "config_linear_unet": dataclasses.asdict(LINEAR_UNET),
        "heads": {"clip": cfg.clip.heads,
                  "unet": {str(cfg.unet.model_channels * m):
                           cfg.unet.heads(cfg.unet.model_channels * m)
                           for m in cfg.unet.channel_mult},
                  "unet_linear": {str(LINEAR_UNET.model_channels * m):
                                  LINEAR_UNET.heads(
                                      LINEAR_UNET.model_channels * m)
                                  for m in LINEAR_UNET.channel_mult}},
        "dtypes": {"sd-tiny.safetensors": SINGLE_DTYPES,
                   "sd-tiny-diffusers": DIFFUSERS_DTYPES,
                   "sd-tiny-linear.safetensors": LINEAR_DTYPE},
        "tokenizer": {"vocab_size": len(vocab), "merges": len(merges),
                      "bos": tok.bos, "eos": tok.eos},
        "prompts": {"prompt": PROMPT, "negative": NEGATIVE,
                    "weighted": WEIGHTED_PROMPT,
                    "weighted_parsed": R.parse_attention(WEIGHTED_PROMPT),
                    "long": long_prompt(),
                    "long_chunk_tokens": [
                        sum(1 for t in ids[1:-1] if t != tok.eos)
                        for ids, _ in R.prompt_chunks(tok, long_prompt())]},
        "unet_t": list(UNET_T),
        "latent_shape": list(LATENT_SHAPE),
        "sample": {"steps": STEPS, "cfg": CFG, "seed": SEED,
                   "noise_streams": "0 initial; euler_a step i: 1 + i",
                   "cond": "text.hidden[0]", "uncond": "text.hidden[1]",
                   "samplers": list(R.SAMPLERS),
                   "v_prediction": ["euler", "ddim"]},
        "img2img": dict(IMG2IMG, init="vae.encoded", steps_run=n_i2i,
                        samplers=["euler", "ddim"]),
        "txt2img": {"prompt": PROMPT, "negative": NEGATIVE,
                    "sampler": "euler", "steps": STEPS, "cfg": CFG,
                    "seed": SEED, "clip_skip": 1,
                    "image": "clamp((decoded+1)/2,0,1), floor(255 v + 0.5)"},
        "clip_skip": {"text.hidden": 1, "text.hidden_skip2": 2},
        "tensors": {k: {"dtype": dt, "shape": list(np.shape(v)),
                        "what": describe(k)}
                    for k, (dt, v) in sorted(tensors.items())},
        "tolerances": tolerances(ref, f32),
        "notes": [
            "Weights are exactly representable in bf16 and fp16; each "
            "layout stores the same values.",
            "Expected values are float64 results stored as float32; inputs "
            "are stored exactly as used.",
            "atol_f32: suggested bound for an fp32 implementation, "
            f"{REL_TOL_MODEL:g} (model passes) or {REL_TOL_SAMPLER:g} "
            "(sampler results) of max_abs; this reference run in float32 "
            "stays 5x inside. fp16/bf16 compute needs looser bounds "
            "(around 1e-2 relative on a UNet pass, more after the sampler "
            "steps at cfg 7.5).",
        ],
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(settings, f, indent=2)
        f.write("\n")

    if not args.skip_check:
        check_layouts.check(out)

    total = 0
    print("\nfiles:")
    for root, _, files in sorted(os.walk(out)):
        for name in sorted(files):
            p = os.path.join(root, name)
            size = os.path.getsize(p)
            total += size
            print(f"  {size:9d}  {sha256(p)[:16]}  {os.path.relpath(p, out)}")
    print(f"  {total:9d}  total ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
