#!/usr/bin/python3
"""Optional cross-check of the reference against third-party libraries.

    python3 tests/reference/crosscheck_hf.py [tests/data/sd-tiny]

Where `safetensors`, `transformers` and `regex` are installed (they are not
needed by anything else here), checks that
- the official safetensors reader reads our files to the same values, and
  our reader reads what the official writer wrote;
- transformers' CLIPTextModel, loaded from the diffusers folder's
  text_encoder, reproduces text.hidden and text.hidden_skip2;
- transformers' CLIP tokenizers, given the tiny vocab.json/merges.txt,
  tokenize the fixture prompts and the corpus as our tokenizer does;
- the CLIP pre-tokenizer with real \\p{L}/\\p{N} classes (`regex`) splits as
  our `re` approximation does on ASCII and common Latin text.
Each part is skipped when its library is missing.
"""

import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sd_ref as R  # noqa: E402
import st  # noqa: E402
import make_fixtures as MF  # noqa: E402


def have(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        print(f"  --  {mod} not installed, its checks skipped")
        return False


def check_safetensors(out):
    from safetensors.numpy import load_file as np_load
    from safetensors.torch import load_file as pt_load, save_file
    paths = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs
             if f.endswith(".safetensors")]
    for p in paths:
        ours, _, dtypes = st.load(p)
        theirs = pt_load(p)  # torch: handles BF16
        assert set(ours) == set(theirs), p
        for k, v in ours.items():
            t = theirs[k]
            want = t.float().numpy() if t.is_floating_point() else t.numpy()
            assert np.array_equal(v.astype(want.dtype), want), (p, k)
        if "BF16" not in dtypes.values():
            np_load(p)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.safetensors")
        src = {"b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "a": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
               "c": torch.ones(3, dtype=torch.float16),
               "d": torch.tensor([7], dtype=torch.uint8)}
        save_file(src, p, metadata={"k": "v"})
        ours, meta, _ = st.load(p)
        assert meta == {"k": "v"}
        for k, v in src.items():
            assert np.array_equal(ours[k], v.float().numpy()
                                  if v.is_floating_point() else v.numpy()), k
    print(f"  ok  official safetensors reader agrees on {len(paths)} files; "
          "our reader reads the official writer's output")


def check_clip(out, exp):
    from transformers import CLIPTextConfig, CLIPTextModel
    from safetensors.torch import load_file
    folder = os.path.join(out, "sd-tiny-diffusers")
    with open(os.path.join(folder, "text_encoder/config.json")) as f:
        c = json.load(f)
    cfg = CLIPTextConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        max_position_embeddings=c["max_position_embeddings"],
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=c["bos_token_id"], eos_token_id=c["eos_token_id"])
    try:
        model = CLIPTextModel(cfg, attn_implementation="eager")
    except TypeError:
        model = CLIPTextModel(cfg)
    sd = load_file(os.path.join(folder, "text_encoder/model.safetensors"))
    # transformers 5 keeps no `text_model.` level in the module's own names
    # (from_pretrained renames); strip it when the module has none.
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        sd = {k[len("text_model."):]: v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), \
        (missing, unexpected)
    model = model.double().eval()
    ids = torch.from_numpy(exp["text.ids"]).long()
    with torch.no_grad():
        o = model(input_ids=ids, output_hidden_states=True)
        inner = getattr(model, "text_model", model)
        skip2 = inner.final_layer_norm(o.hidden_states[-2])
    for name, got in (("text.hidden", o.last_hidden_state),
                      ("text.hidden_skip2", skip2)):
        err = float((got - torch.from_numpy(exp[name]).double()).abs().max())
        assert err < 1e-5, (name, err)
        print(f"  ok  transformers CLIPTextModel reproduces {name} "
              f"(max abs diff {err:.2g}, fixture stored as f32)")


def check_tokenizer(out, exp):
    import transformers
    folder = os.path.join(out, "sd-tiny-diffusers/tokenizer")
    ours = R.Tokenizer.from_files(os.path.join(folder, "vocab.json"),
                                  os.path.join(folder, "merges.txt"))
    texts = (MF.caption_corpus() + [MF.PROMPT, MF.NEGATIVE, MF.long_prompt(),
                                     "Hello,   WORLD!! it's 3 + 4",
                                     "zebra qux_v2 don't"])
    for cls in ("CLIPTokenizer", "CLIPTokenizerFast"):
        if not hasattr(transformers, cls):
            continue
        tok = getattr(transformers, cls)(
            os.path.join(folder, "vocab.json"),
            os.path.join(folder, "merges.txt"))
        bad = [t for t in texts if tok(t)["input_ids"]
               != [ours.bos] + ours.encode(t) + [ours.eos]]
        assert not bad, (cls, bad[:3])
        print(f"  ok  transformers {cls} == ours on {len(texts)} texts")
        # Known difference: openai CLIP (and the doc) HTML-unescape, HF's
        # tokenizers do not.
        t = "3 &amp; 4"
        print(f"  --  {cls} on {t!r}: {tok(t)['input_ids']}, ours (HTML "
              f"unescaped) {[ours.bos] + ours.encode(t) + [ours.eos]}")
    ids = np.array([ours(MF.PROMPT), ours(MF.NEGATIVE)])
    assert np.array_equal(ids, exp["text.ids"])


def check_pattern():
    import regex
    real = regex.compile(
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
        r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
    texts = ["a photo of a cat", "it's 2024, isn't it?", "x_y__z 12ab",
             "<|startoftext|>hi<|endoftext|>", "café naïve über",
             "(red:1.3) [blue] \\(x\\)", "#$%^&*_+=", "tab\tnew\nline"]
    for t in texts:
        t = R.clean_text(t)
        assert real.findall(t) == R.PRETOKEN_RE.findall(t), t
    print(f"  ok  pre-tokenizer: re approximation == \\p{{L}}/\\p{{N}} "
          f"pattern on {len(texts)} texts")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "data", "sd-tiny")
    exp, _, _ = st.load(os.path.join(out, "expected.safetensors"))
    print(f"crosscheck_hf: {out}")
    if have("safetensors"):
        check_safetensors(out)
    if have("transformers") and have("safetensors"):
        check_clip(out, exp)
        check_tokenizer(out, exp)
    if have("regex"):
        check_pattern()
    print("crosscheck_hf: done")


if __name__ == "__main__":
    main()
