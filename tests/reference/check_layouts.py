#!/usr/bin/python3
"""Self-check of the sd-tiny fixtures.

    /usr/bin/python3 tests/reference/check_layouts.py [tests/data/sd-tiny]

Loads the single-file checkpoint and the diffusers folder back through the
name mapping, asserts that they hold the same values and that models built
from either produce identical outputs, that these match expected.safetensors,
that the sizes read from shapes equal the recorded config, and that the
tokenizers reproduce their test vectors.
"""

import json
import os
import struct
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sd_ref as R  # noqa: E402
import st  # noqa: E402

DIFFUSERS_FILES = {"unet/": "unet/diffusion_pytorch_model.safetensors",
                   "vae/": "vae/diffusion_pytorch_model.safetensors",
                   "text_encoder/": "text_encoder/model.safetensors"}
# SD 1.x's CLIP tokenizer files with quoted test vectors, where present: the
# GH_CLIP_VOCAB_DIR the tests use, else the shared data beside the checkout.
CLIP_VECTORS = os.environ.get("GH_CLIP_VOCAB_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared",
    "data", "clip-vit-large-patch14")


def ok(msg):
    print(f"  ok  {msg}")


def check_file_layout(path):
    """Header padded to 8 bytes, tensors in sorted name order, no gaps."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0, path
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    pos = 0
    for name in sorted(header):
        b, e = header[name]["data_offsets"]
        assert b == pos, (path, name)
        pos = e
    assert 8 + n + pos == len(raw), path


def load_diffusers(folder):
    d = {}
    for prefix, rel in DIFFUSERS_FILES.items():
        path = os.path.join(folder, rel)
        check_file_layout(path)
        tensors, _, _ = st.load(path)
        d.update({prefix + k: v for k, v in tensors.items()})
    return d


def config_from_json(j):
    return R.SDConfig(clip=R.ClipConfig(**j["clip"]),
                      unet=unet_config_from_json(j["unet"]),
                      vae=R.VAEConfig(**dict(
                          j["vae"], channel_mult=tuple(
                              j["vae"]["channel_mult"]))))


def unet_config_from_json(u):
    return R.UNetConfig(**dict(u, channel_mult=tuple(u["channel_mult"]),
                               attention_levels=tuple(u["attention_levels"])))


def same_values(a, b, what):
    assert set(a) == set(b), (what, sorted(set(a) ^ set(b))[:10])
    for k in a:
        assert a[k].shape == b[k].shape, (what, k, a[k].shape, b[k].shape)
        assert np.array_equal(a[k], b[k]), (what, k)


def assert_close(got, want, name, rtol=2e-6):
    """Float32 storage of a float64 result: equal within f32 rounding."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = np.max(np.abs(got - want))
    bound = rtol * max(1.0, float(np.max(np.abs(want))))
    assert err <= bound, (name, err, bound)


def check(out):
    print(f"check_layouts: {out}")
    exp, _, _ = st.load(os.path.join(out, "expected.safetensors"))
    with open(os.path.join(out, "expected.json")) as f:
        settings = json.load(f)
    cfg = config_from_json(settings["config"])
    lin_cfg = unet_config_from_json(settings["config_linear_unet"])

    # Files and mapping.
    single_path = os.path.join(out, "sd-tiny.safetensors")
    check_file_layout(single_path)
    single, meta, dtypes = st.load(single_path)
    assert dtypes["model_ema.decay"] == "F32"
    assert dtypes[R.CLIP_PREFIX + "text_model.embeddings.position_ids"] \
        == "I64"
    folder = os.path.join(out, "sd-tiny-diffusers")
    diff = load_diffusers(folder)
    ok(f"files parse; single file {len(single)} tensors "
       f"(metadata {meta}), diffusers {len(diff)} tensors")

    params = {k: v for k, v in single.items()
              if k.startswith((R.UNET_PREFIX, R.VAE_PREFIX, R.CLIP_PREFIX))
              and not k.endswith("position_ids")}
    same_values(R.from_diffusers(diff, cfg), params, "diffusers->original")
    same_values(R.to_diffusers(single, cfg), diff, "original->diffusers")
    ok("diffusers folder == single file through the mapping (both ways, "
       "bitwise)")
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value",
              "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in diff.items():
        for new, old in legacy.items():
            k = k.replace(f".mid_block.attentions.0.{new}.",
                          f".mid_block.attentions.0.{old}.")
        renamed[k] = v
    assert renamed.keys() != diff.keys()
    same_values(R.from_diffusers(renamed, cfg), params, "legacy VAE names")
    ok("legacy diffusers VAE attention names (query/key/value/proj_attn) "
       "map the same")

    assert R.infer_config(single) == cfg, R.infer_config(single)
    assert R.infer_config(R.from_diffusers(diff, cfg)) == cfg
    lin_path = os.path.join(out, "sd-tiny-linear.safetensors")
    check_file_layout(lin_path)
    lin, _, _ = st.load(lin_path)
    lin_sd = {k: v for k, v in lin.items()}
    # infer_config needs a whole checkpoint: borrow CLIP/VAE from the tiny.
    borrowed = dict(lin_sd, **{k: v for k, v in single.items()
                               if not k.startswith(R.UNET_PREFIX)})
    assert R.infer_config(borrowed).unet == lin_cfg
    ok("sizes read from shapes == recorded configs (tiny and linear UNet)")

    # Tokenizer.
    tok = R.Tokenizer.from_files(os.path.join(folder, "tokenizer/vocab.json"),
                                 os.path.join(folder, "tokenizer/merges.txt"))
    prompts = settings["prompts"]
    ids = np.array([tok(prompts["prompt"]), tok(prompts["negative"])])
    assert np.array_equal(ids, exp["text.ids"])
    ok(f"tiny tokenizer reproduces text.ids ({len(tok.encoder)} tokens)")
    vec_path = os.path.join(CLIP_VECTORS, "tokenizer_test_vectors.jsonl")
    if os.path.exists(vec_path):
        big = R.Tokenizer.from_files(os.path.join(CLIP_VECTORS, "vocab.json"),
                                     os.path.join(CLIP_VECTORS, "merges.txt"))
        with open(vec_path) as f:
            vecs = [json.loads(line) for line in f if line.strip()]
        for v in vecs:
            got = [big.bos] + big.encode(v["text"]) + [big.eos]
            assert got == v["ids"], (v["text"], got, v["ids"])
        ok(f"CLIP ViT-L/14 tokenizer: {len(vecs)}/{len(vecs)} test vectors")
    else:
        print("  --  CLIP tokenizer test vectors absent, skipped")

    # Models from both layouts: identical outputs, equal to the fixtures.
    def t(name):
        return torch.from_numpy(exp[name]).double()

    outs = []
    for label, sd in (("single", single), ("diffusers",
                                           R.from_diffusers(diff, cfg))):
        clip = R.load_clip(sd, cfg.clip)
        unet = R.load_unet(sd, cfg.unet)
        vae = R.load_vae(sd, cfg.vae)
        with torch.no_grad():
            o = {
                "text.hidden": clip(torch.from_numpy(exp["text.ids"]).long()),
                "text.hidden_skip2": clip(
                    torch.from_numpy(exp["text.ids"]).long(), 2),
                "unet.out": unet(t("unet.x"), t("unet.t"),
                                 t("unet.context")),
                "vae.decoded": vae.decode_raw(t("vae.latent")),
                "vae.encoded": vae.encode(t("vae.image")),
                "sample.euler.latent": R.generate(
                    unet, R.Schedule(), "euler", t("text.hidden")[0:1],
                    t("text.hidden")[1:2], settings["sample"]["cfg"],
                    settings["sample"]["steps"], settings["sample"]["seed"],
                    tuple(settings["latent_shape"])),
            }
        outs.append({k: v.numpy() for k, v in o.items()})
    for k in outs[0]:
        assert np.array_equal(outs[0][k], outs[1][k]), k
        assert_close(outs[0][k], exp[k], k)
    ok("single-file and diffusers models: bitwise identical outputs, equal "
       "to the fixtures: " + ", ".join(outs[0]))

    lin_unet = R.load_unet(lin_sd, lin_cfg)
    with torch.no_grad():
        o = lin_unet(t("unet_linear.x"), t("unet_linear.t"),
                     t("unet_linear.context"))
    assert_close(o.numpy(), exp["unet_linear.out"], "unet_linear.out")
    ok("linear-projection UNet reproduces unet_linear.out")

    for name in ("noise.seed1234.stream0", "noise.seed1234.stream1",
                 "noise.seed99.stream0"):
        seed = int(name.split(".")[1][4:])
        stream = int(name.split(".")[2][6:])
        got = R.noise(seed, stream, exp[name].shape[1:])[None]
        assert np.array_equal(got, exp[name]), name
    ok("noise generator reproduces the noise fixtures")
    print("check_layouts: all ok")


if __name__ == "__main__":
    check(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "data", "sd-tiny"))
