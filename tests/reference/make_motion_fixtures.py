#!/usr/bin/python3
"""Generate the tiny motion module fixtures (AnimateDiff v2 style: a module
after every res block of the down and up blocks, one in the mid block, a
32-frame position encoding) for the tiny SD model of tests/data/sd-tiny:

    /usr/bin/python3 tests/reference/make_motion_fixtures.py

Writes, next to sd-tiny.safetensors (which it reads):
  motion-tiny.safetensors           AnimateDiff's own naming, F16, with the
                                    pos_encoder.pe buffers (F32)
  motion-tiny-diffusers.safetensors the diffusers MotionAdapter's naming
                                    (no pe), BF16 (the values are exact in
                                    both fp16 and bf16)
  motion-expected.safetensors       inputs and float64 expected outputs:
      motion.unet.{x,t,context,out}  one UNet evaluation with the modules,
                                     2 videos of 8 frames (16 items)
      motion.sample.latent           euler, 3 steps, CFG 7.5, seed 1234,
                                     8 frames, from the fixtures' stored
                                     text encoder outputs (text.hidden of
                                     expected.safetensors: the prompt, then
                                     the empty negative prompt)
      motion.sample.no_motion        the same without the modules (the
                                     modules must change the result)
      motion.sample.windows          12 frames on context windows of 8
                                     overlapping by 4 (frames 0-7, 4-11),
                                     otherwise as motion.sample.latent
      motion.sample.frames           the sample's frames through the VAE,
                                     RGB8 [8, 64, 64, 3] (what the video
                                     plugin must put out for the prompt)
  motion-expected.json              the settings, and float32-vs-float64
                                    differences as tolerances.
Deterministic: NumPy's RandomState streams; float64 references.
"""

import json
import os
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as MF  # noqa: E402
import sd_ref as R  # noqa: E402
import st  # noqa: E402

FRAMES = 8
VIDEOS = 2
MAX_LEN = 32
SAMPLER, STEPS, CFG, SEED = "euler", 3, 7.5, 1234
MOTION_SEED = 21
WINDOWS = (12, 8, 4)  # frames, window, overlap


def motion_weights(cfg):
    """Random parameters (make_fixtures' rules) with the real encodings."""
    mm = R.MotionAdapter(cfg, mid=True, max_len=MAX_LEN)
    w = MF.random_weights(mm, MOTION_SEED)
    for k, v in mm.state_dict().items():
        if k.endswith("pos_encoder.pe"):
            w[k] = v.numpy().astype(np.float32)
    return {k.replace(".attn.", "."): v for k, v in w.items()}


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compute(unet, mm, vae, inputs, hidden, dtype):
    sched = R.Schedule()

    def t(name):
        return torch.from_numpy(inputs[name]).to(dtype)

    def video(x, tt, ctx):
        return R.unet_video(unet, mm, x, tt, ctx, FRAMES)

    with torch.no_grad():
        out = {"motion.unet.out": video(t("motion.unet.x"), t("motion.unet.t"),
                                        t("motion.unet.context"))}
        cond = torch.from_numpy(hidden[0:1]).to(dtype)
        uncond = torch.from_numpy(hidden[1:2]).to(dtype)
        shape = (FRAMES,) + MF.LATENT_SHAPE[1:]
        out["motion.sample.latent"] = R.generate(
            video, sched, SAMPLER, cond, uncond, CFG, STEPS, SEED, shape,
            dtype=dtype)
        win = R.unet_windows(unet, mm, WINDOWS[0], WINDOWS[1], WINDOWS[2])
        out["motion.sample.windows"] = R.generate(
            win, sched, SAMPLER, cond, uncond, CFG, STEPS, SEED,
            (WINDOWS[0],) + MF.LATENT_SHAPE[1:], dtype=dtype)
        out["motion.sample.no_motion"] = R.generate(
            unet, sched, SAMPLER, cond, uncond, CFG, STEPS, SEED, shape,
            dtype=dtype)
        lat = out["motion.sample.latent"]
        out["motion.sample.frames"] = torch.from_numpy(np.stack(
            [R.to_rgb8(vae.decode(lat[f:f + 1])) for f in range(FRAMES)]))
    return {k: v.numpy() for k, v in out.items()}


def main():
    out = os.path.normpath(os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "..", "data", "sd-tiny"))
    torch.set_num_threads(1)
    sd = st.load(os.path.join(out, "sd-tiny.safetensors"))[0]
    settings = json.load(open(os.path.join(out, "expected.json")))
    cfg = R.UNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in settings["config"]["unet"].items()})
    expected = st.load(os.path.join(out, "expected.safetensors"))[0]
    hidden = expected["text.hidden"].astype(np.float64)

    w = motion_weights(cfg)
    st.save(os.path.join(out, "motion-tiny.safetensors"),
            {k: ("F32" if k.endswith(".pe") else "F16", v)
             for k, v in w.items()}, metadata={"format": "pt"})
    st.save(os.path.join(out, "motion-tiny-diffusers.safetensors"),
            {k: ("BF16", v) for k, v in R.motion_to_diffusers(w).items()},
            metadata={"format": "pt"})

    rs = np.random.RandomState(300)
    n, lat = VIDEOS * FRAMES, MF.LATENT_SHAPE[2]
    inputs = {
        "motion.unet.x": rs.standard_normal((n, 4, lat, lat)),
        "motion.unet.t": np.full((n,), 421.37),
        "motion.unet.context": 0.5 * rs.standard_normal(
            (n, 77, cfg.context_dim)),
    }
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}

    vcfg = R.VAEConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in settings["config"]["vae"].items()})

    def models(dtype):
        return (R.load_unet(sd, cfg, dtype), R.load_motion(w, cfg, dtype),
                R.load_vae(sd, vcfg, dtype))

    ref = compute(*models(torch.float64), inputs, hidden, torch.float64)
    f32 = compute(*models(torch.float32), inputs, hidden, torch.float32)
    effect = rel(ref["motion.sample.latent"], ref["motion.sample.no_motion"])
    assert effect > 1e-2, "the motion modules hardly change the sample"

    tensors = {k: ("F32", v) for k, v in inputs.items()}
    tensors.update({k: ("U8", v) if v.dtype == np.uint8 else
                    ("F32", v.astype(np.float32)) for k, v in ref.items()})
    st.save(os.path.join(out, "motion-expected.safetensors"), tensors,
            exact=False)
    json.dump({
        "generator": "tests/reference/make_motion_fixtures.py",
        "frames": FRAMES, "videos": VIDEOS, "max_len": MAX_LEN,
        "mid_block": True, "sample": {"sampler": SAMPLER, "steps": STEPS,
                                      "cfg": CFG, "seed": SEED},
        "windows": {"frames": WINDOWS[0], "window": WINDOWS[1],
                    "overlap": WINDOWS[2]},
        "motion_effect": effect,
        "tolerances": {k: rel(f32[k], ref[k]) for k in ref
                       if ref[k].dtype != np.uint8},
        "frames_max_diff_f32": int(np.abs(
            f32["motion.sample.frames"].astype(int)
            - ref["motion.sample.frames"].astype(int)).max()),
        "notes": "Group norms per frame (AnimateDiff's); frames inner in "
                 "the batch; noise of frame b from seed + b.",
    }, open(os.path.join(out, "motion-expected.json"), "w"), indent=1)
    for k in ref:
        if ref[k].dtype != np.uint8:
            print("%-28s float32 vs float64 %.2e" % (k, rel(f32[k], ref[k])))
    print("the modules change the sample by %.2e (relative L2)" % effect)


if __name__ == "__main__":
    main()
