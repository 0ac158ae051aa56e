"""Independent PyTorch reference for the gpuhost diffusion runtime.

Implements docs/diffusion.md: the Stable Diffusion 1.x model parts (CLIP
text encoder, UNet, VAE), the CLIP BPE tokenizer and A1111 prompt weighting,
the noise schedule, the samplers (euler, euler_a, dpmpp_2m, dpmpp_2m_karras,
ddim) with classifier-free guidance and eps/v prediction, img2img, and the
seeded noise generator. Written from the published architectures (LDM
`openaimodel.py` and `model.py`, HF `CLIPTextModel`, k-diffusion's sampler
formulas, diffusers' DDIM), not from the C runtime.

Models take their parameters from a dict in the original single-file naming
(`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.text_model.*`); `to_diffusers` and
`from_diffusers` convert to and from the diffusers folder naming
(`unet/*`, `vae/*`, `text_encoder/*`) by an explicit mapping.

Expected outputs are computed in float64 (`model.double()`).
"""

import dataclasses
import html
import json
import math
import re
from dataclasses import dataclass, field
from typing import Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
LATENT_SCALE = 0.18215


# ============================================================== configuration


@dataclass(frozen=True)
class ClipConfig:
    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    positions: int = 77
    mlp_ratio: int = 4

    @property
    def heads(self):
        return self.width // 64  # the SD family's fixed rule


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
    attention_levels: Tuple[int, ...] = (0, 1, 2)
    num_res_blocks: int = 2
    transformer_depth: int = 1
    context_dim: int = 768
    linear_proj: bool = False  # proj_in/proj_out: 1x1 conv (SD1) or linear

    def heads(self, channels):
        """SD1 (conv proj_in): 8 heads; SD2 style (linear): 64-wide heads."""
        return channels // 64 if self.linear_proj else 8

    @property
    def levels(self):
        return len(self.channel_mult)


@dataclass(frozen=True)
class VAEConfig:
    base_channels: int = 128
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4
    image_channels: int = 3

    @property
    def levels(self):
        return len(self.channel_mult)

    @property
    def factor(self):
        return 2 ** (self.levels - 1)


@dataclass(frozen=True)
class SDConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)

    @staticmethod
    def sd15():
        """Stable Diffusion 1.5 sizes (for a full-size random checkpoint)."""
        return SDConfig()

    def to_json(self):
        return dataclasses.asdict(self)


# ================================================================= tokenizer


def bytes_to_unicode():
    """CLIP/GPT-2 byte -> printable unicode character table, in CLIP's order
    (printable bytes first, then the rest mapped to 256 + n)."""
    bs = (list(range(ord("!"), ord("~") + 1))
          + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


BOS_TEXT = "<|startoftext|>"
EOS_TEXT = "<|endoftext|>"

# CLIP's pre-tokenizer. Python's `re` has no \p{L} / \p{N}: letters are
# [^\W\d_], numbers \d, and "neither space, letter nor number" is
# (?:[^\s\w]|_). Equal to CLIP's pattern for ASCII text.
PRETOKEN_RE = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
    re.IGNORECASE)


def clean_text(text):
    """HTML-unescape (twice, as CLIP does), collapse whitespace, lower-case.
    (CLIP also runs ftfy.fix_text first; that is left out here.)"""
    text = html.unescape(html.unescape(text)).strip()
    text = re.sub(r"\s+", " ", text).strip()
    return text.lower()


def pretokenize(text):
    return PRETOKEN_RE.findall(clean_text(text))


class Tokenizer:
    """CLIP byte-level BPE (openai simple_tokenizer semantics)."""

    def __init__(self, vocab, merges, length=77):
        self.encoder = dict(vocab)
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.bos = self.encoder[BOS_TEXT]
        self.eos = self.encoder[EOS_TEXT]
        self.length = length
        self.cache = {BOS_TEXT: (BOS_TEXT,), EOS_TEXT: (EOS_TEXT,)}

    @staticmethod
    def from_files(vocab_path, merges_path, length=77):
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        return Tokenizer(vocab, read_merges(merges_path), length)

    def bpe(self, token):
        """One pre-token (byte characters) -> its BPE symbols."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):  # merge every occurrence, left to right
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = word
        return word

    def encode(self, text):
        """Text -> token ids, without BOS/EOS."""
        ids = []
        for tok in pretokenize(text):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(tok))
        return ids

    def __call__(self, text):
        """Text -> `length` ids: BOS, tokens, EOS, padded with EOS (SD1.x
        convention); too long: truncated so that the last id is EOS."""
        ids = [self.bos] + self.encode(text)[:self.length - 2] + [self.eos]
        return ids + [self.eos] * (self.length - len(ids))


def read_merges(path):
    merges = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == 0 and line.startswith("#version"):
                continue
            parts = line.split()
            if len(parts) == 2:
                merges.append((parts[0], parts[1]))
    return merges


# ------------------------------------------------ A1111 prompt weighting

_ATTENTION_RE = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]"
    r"|[^\\()\[\]:]+|:")


def parse_attention(text):
    """A1111 emphasis syntax -> [(text, weight)]: `(x)` * 1.1, `[x]` / 1.1,
    `(x:w)` * w, nesting multiplies, `\\(` etc. literal, unclosed brackets
    apply to the end. Neighbouring pieces of equal weight are merged."""
    res = []
    round_open, square_open = [], []

    def scale(start, factor):
        for p in range(start, len(res)):
            res[p][1] *= factor

    for m in _ATTENTION_RE.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):  # escaped character; a lone backslash is dropped
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            res.append([piece, 1.0])
    for pos in round_open:
        scale(pos, 1.1)
    for pos in square_open:
        scale(pos, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            del res[i + 1]
        else:
            i += 1
    return [(t, w) for t, w in res]


def prompt_chunks(tok, text, chunk=75, backtrack=20):
    """A1111 chunking: a prompt -> [(ids[77], weights[77])]. Each chunk is
    BOS + 75 tokens (padded with EOS, weight 1) + EOS; a full chunk breaks
    after the last comma if that is at most `backtrack` tokens back."""
    comma = tok.encoder.get(",</w>")
    chunks = []
    cur_ids, cur_w = [], []
    last_comma = -1

    def flush():
        nonlocal cur_ids, cur_w, last_comma
        pad = chunk - len(cur_ids)
        ids = [tok.bos] + cur_ids + [tok.eos] * pad + [tok.eos]
        ws = [1.0] + cur_w + [1.0] * pad + [1.0]
        chunks.append((ids, ws))
        cur_ids, cur_w, last_comma = [], [], -1

    for piece, weight in parse_attention(text):
        for t in tok.encode(piece):
            if t == comma:
                last_comma = len(cur_ids)
            elif (len(cur_ids) == chunk and last_comma != -1
                  and len(cur_ids) - last_comma <= backtrack):
                cut = last_comma + 1
                moved_ids, moved_w = cur_ids[cut:], cur_w[cut:]
                cur_ids, cur_w = cur_ids[:cut], cur_w[:cut]
                flush()
                cur_ids, cur_w = moved_ids, moved_w
            if len(cur_ids) == chunk:
                flush()
            cur_ids.append(t)
            cur_w.append(weight)
    if cur_ids or not chunks:
        flush()
    return chunks


# ====================================================================== CLIP


class CLIPAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, mask):
        b, n, c = x.shape
        hd = c // self.heads

        def split(t):
            return t.reshape(b, n, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(
            self.v_proj(x))
        w = torch.matmul(q, k.transpose(-1, -2)) * hd ** -0.5 + mask
        a = torch.matmul(torch.softmax(w, dim=-1), v)
        return self.out_proj(a.transpose(1, 2).reshape(b, n, c))


class CLIPMLP(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick GELU


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = CLIPAttention(cfg.width, cfg.heads)
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=1e-5)
        self.mlp = CLIPMLP(cfg.width, cfg.width * cfg.mlp_ratio)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=1e-5)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.positions, cfg.width)


class CLIPEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(cfg) for _ in range(cfg.layers))


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=1e-5)


class CLIPTextModel(nn.Module):
    """HF CLIPTextModel layout (`text_model.*`); forward returns the hidden
    states that SD conditions on."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.text_model = CLIPTextTransformer(cfg)

    def forward(self, ids, clip_skip=1):
        """ids [B, n] -> [B, n, width]. clip_skip k (1 = none) takes the
        output of layer L - (k - 1), then the final LayerNorm."""
        tm = self.text_model
        n = ids.shape[1]
        x = tm.embeddings.token_embedding(ids)
        x = x + tm.embeddings.position_embedding.weight[:n]
        mask = torch.full((n, n), float("-inf"), dtype=x.dtype,
                          device=x.device).triu(1)
        upto = len(tm.encoder.layers) - (clip_skip - 1)
        for layer in tm.encoder.layers[:upto]:
            x = layer(x, mask)
        return tm.final_layer_norm(x)


def encode_prompt(clip, tok, text, clip_skip=1):
    """A1111 prompt encoding: chunks encoded separately, weighted
    (`z *= w`, then rescaled to the chunk's original mean), concatenated."""
    outs = []
    dtype = clip.text_model.final_layer_norm.weight.dtype
    device = clip.text_model.final_layer_norm.weight.device
    for ids, ws in prompt_chunks(tok, text):
        z = clip(torch.tensor([ids], device=device), clip_skip)
        mean_before = z.mean()
        z = z * torch.tensor(ws, dtype=dtype, device=device)[None, :, None]
        z = z * (mean_before / z.mean())
        outs.append(z)
    return torch.cat(outs, dim=1)


def encode_prompt_pair(clip, tok, prompt, negative, clip_skip=1):
    """(cond, uncond), the shorter padded with empty-prompt chunks."""
    cond = encode_prompt(clip, tok, prompt, clip_skip)
    uncond = encode_prompt(clip, tok, negative, clip_skip)
    empty = encode_prompt(clip, tok, "", clip_skip)
    n = tok.length
    while cond.shape[1] < uncond.shape[1]:
        cond = torch.cat([cond, empty], dim=1)
    while uncond.shape[1] < cond.shape[1]:
        uncond = torch.cat([uncond, empty], dim=1)
    assert cond.shape[1] % n == 0
    return cond, uncond


# ====================================================================== UNet


def timestep_embedding(t, dim):
    """[cos, sin] of t * exp(-ln(10000) * i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=t.dtype,
                                                         device=t.device)
                      / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """LDM ResBlock with time embedding (GroupNorm eps 1e-5)."""

    def __init__(self, cin, cout, emb_dim):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(32, cin, eps=1e-5), nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, cout, eps=1e-5), nn.SiLU(), nn.Dropout(0.0),
            nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = (nn.Conv2d(cin, cout, 1) if cin != cout
                                else nn.Identity())

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class CrossAttention(nn.Module):
    def __init__(self, dim, context_dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        b, n, c = x.shape
        h = self.heads
        hd = c // h
        q = self.to_q(x).reshape(b, n, h, hd).transpose(1, 2)
        k = self.to_k(context).reshape(b, -1, h, hd).transpose(1, 2)
        v = self.to_v(context).reshape(b, -1, h, hd).transpose(1, 2)
        w = torch.matmul(q, k.transpose(-1, -2)) * hd ** -0.5
        a = torch.matmul(torch.softmax(w, dim=-1), v)
        return self.to_out(a.transpose(1, 2).reshape(b, n, c))


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0),
                                 nn.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, context_dim, heads):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm (eps 1e-6), proj_in (1x1 conv or linear), transformer
    blocks, proj_out, plus the input."""

    def __init__(self, ch, cfg):
        super().__init__()
        self.linear = cfg.linear_proj
        self.norm = nn.GroupNorm(32, ch, eps=1e-6)
        if self.linear:
            self.proj_in = nn.Linear(ch, ch)
            self.proj_out = nn.Linear(ch, ch)
        else:
            self.proj_in = nn.Conv2d(ch, ch, 1)
            self.proj_out = nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(ch, cfg.context_dim, cfg.heads(ch))
            for _ in range(cfg.transformer_depth))

    def forward(self, x, context):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.reshape(b, c, hh * ww).transpose(1, 2)
        if self.linear:
            h = self.proj_in(h)
        for blk in self.transformer_blocks:
            h = blk(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.transpose(1, 2).reshape(b, c, hh, ww)
        if not self.linear:
            h = self.proj_out(h)
        return x + h


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepBlock(nn.ModuleList):
    """LDM's TimestepEmbedSequential: a list of layers, each given what it
    needs (emb for ResBlocks, context for transformers)."""

    def forward(self, x, emb, context):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """LDM openaimodel.UNetModel (the parts SD 1.x/2.x use)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList(
            [TimestepBlock([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        skips = [mc]
        ch = mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, mult * mc, emb_dim)]
                ch = mult * mc
                if level in cfg.attention_levels:
                    layers.append(SpatialTransformer(ch, cfg))
                self.input_blocks.append(TimestepBlock(layers))
                skips.append(ch)
            if level != cfg.levels - 1:
                self.input_blocks.append(TimestepBlock([Downsample(ch)]))
                skips.append(ch)
        self.middle_block = TimestepBlock([
            ResBlock(ch, ch, emb_dim), SpatialTransformer(ch, cfg),
            ResBlock(ch, ch, emb_dim)])
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(cfg.levels)):
            mult = cfg.channel_mult[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), mult * mc, emb_dim)]
                ch = mult * mc
                if level in cfg.attention_levels:
                    layers.append(SpatialTransformer(ch, cfg))
                if level != 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepBlock(layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch, eps=1e-5), nn.SiLU(),
                                 nn.Conv2d(ch, cfg.out_channels, 3,
                                           padding=1))

    def forward(self, x, t, context):
        """x [B, C, H, W], t [B] (float timesteps), context [B, n, ctx]."""
        emb = self.time_embed(
            timestep_embedding(t.to(x.dtype), self.cfg.model_channels))
        hs = []
        h = x
        for blk in self.input_blocks:
            h = blk(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for blk in self.output_blocks:
            h = blk(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


# ========================================================= motion modules


class PositionalEncoding(nn.Module):
    """AnimateDiff's sinusoid over frames: pe[0, f, 2i] = sin(f w_i),
    pe[0, f, 2i+1] = cos(f w_i), w_i = exp(2i * -ln(10000) / C). Stored
    (a buffer) in AnimateDiff's own checkpoints."""

    def __init__(self, dim, max_len):
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float64)[:, None]
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64)
                        * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim, dtype=torch.float64)
        pe[0, :, 0::2] = torch.sin(pos * div)
        pe[0, :, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[:, :x.shape[1]].to(x.dtype)


class TemporalAttention(nn.Module):
    """AnimateDiff's VersatileAttention in its temporal mode: self-attention
    across the frames at each position; the position encoding goes onto
    its (normed) input, which feeds q, k and v."""

    def __init__(self, dim, heads, max_len):
        super().__init__()
        self.attn = CrossAttention(dim, dim, heads)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x, frames):
        bf, d, c = x.shape  # [(b f), d, c], d = h * w
        b = bf // frames
        x = x.reshape(b, frames, d, c).permute(0, 2, 1, 3).reshape(
            b * d, frames, c)
        out = self.attn(self.pos_encoder(x))
        return out.reshape(b, d, frames, c).permute(0, 2, 1, 3).reshape(
            bf, d, c)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim, heads, max_len):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalAttention(dim, heads, max_len) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-5)
                                   for _ in range(2))
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x, frames):
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x), frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3D(nn.Module):
    """Group norm per frame (32 groups, eps 1e-6), proj_in, one block,
    proj_out, plus the input."""

    def __init__(self, dim, heads, max_len):
        super().__init__()
        self.norm = nn.GroupNorm(32, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(dim, heads, max_len)])
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x, frames):
        bf, c, hh, ww = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(bf, hh * ww, c)
        h = self.proj_in(h)
        for blk in self.transformer_blocks:
            h = blk(h, frames)
        h = self.proj_out(h)
        return x + h.reshape(bf, hh, ww, c).permute(0, 3, 1, 2)


class MotionModule(nn.Module):
    """AnimateDiff's VanillaTemporalModule."""

    def __init__(self, dim, heads=8, max_len=32):
        super().__init__()
        self.temporal_transformer = TemporalTransformer3D(dim, heads, max_len)

    def forward(self, x, frames):
        return self.temporal_transformer(x, frames)


class MotionAdapter(nn.Module):
    """The motion modules of an SD 1.x UNet, in AnimateDiff's naming:
    down_blocks.L.motion_modules.J (one per res block), mid_block (v2), and
    up_blocks.I.motion_modules.J (I = 0 the deepest level)."""

    def __init__(self, cfg, mid=True, max_len=32):
        super().__init__()
        mc = cfg.model_channels
        chs = [mc * m for m in cfg.channel_mult]

        def block(ch, n):
            b = nn.Module()
            b.motion_modules = nn.ModuleList(
                MotionModule(ch, 8, max_len) for _ in range(n))
            return b

        self.down_blocks = nn.ModuleList(block(ch, cfg.num_res_blocks)
                                         for ch in chs)
        self.mid_block = block(chs[-1], 1) if mid else None
        self.up_blocks = nn.ModuleList(block(ch, cfg.num_res_blocks + 1)
                                       for ch in reversed(chs))


def unet_video(unet, mm, x, t, context, frames):
    """UNetModel.forward with the motion modules of `mm` inserted (the
    batch is videos of `frames` frames, frames inner): after each res block
    and its attention, before any down- or upsampler; in the mid block
    between the attention and the second res block."""
    cfg = unet.cfg
    emb = unet.time_embed(timestep_embedding(t.to(x.dtype),
                                             cfg.model_channels))

    def run(blk, h, module):
        for layer in blk:
            if isinstance(layer, (Downsample, Upsample)) and module:
                h, module = module(h, frames), None
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return module(h, frames) if module else h

    hs = []
    h = unet.input_blocks[0](x, emb, context)
    hs.append(h)
    k = 1
    for level in range(cfg.levels):
        for j in range(cfg.num_res_blocks):
            h = run(unet.input_blocks[k],
                    h, mm.down_blocks[level].motion_modules[j])
            hs.append(h)
            k += 1
        if level != cfg.levels - 1:
            h = run(unet.input_blocks[k], h, None)
            hs.append(h)
            k += 1
    res0, attn, res1 = unet.middle_block
    h = attn(res0(h, emb), context)
    if mm.mid_block is not None:
        h = mm.mid_block.motion_modules[0](h, frames)
    h = res1(h, emb)
    k = 0
    for i in range(cfg.levels):
        for j in range(cfg.num_res_blocks + 1):
            h = run(unet.output_blocks[k], torch.cat([h, hs.pop()], dim=1),
                    mm.up_blocks[i].motion_modules[j])
            k += 1
    return unet.out(h)


def context_windows(frames, length, overlap):
    """AnimateDiff-Evolved's uniform context windows, not looped: first
    frames of windows of `length` stepping by length - overlap, the last
    one slid back to end at the last frame."""
    starts, s = [], 0
    while True:
        starts.append(s)
        if s + length >= frames:
            return starts
        s += length - overlap
        if s + length > frames:
            s = frames - length


def unet_windows(unet, mm, frames, length, overlap):
    """A UNet function (x, t, context) for one clip of `frames` frames (per
    CFG half) that runs the modules on context windows and gives each frame
    the plain mean of its windows' outputs."""
    def run(x, t, context):
        halves = x.shape[0] // frames
        out = torch.zeros_like(x)
        count = torch.zeros(frames, dtype=x.dtype, device=x.device)
        for s in context_windows(frames, length, overlap):
            idx = [h * frames + f for h in range(halves)
                   for f in range(s, s + length)]
            out[idx] += unet_video(unet, mm, x[idx], t[idx], context[idx],
                                   length)
            count[s:s + length] += 1
        return out / count.repeat(halves)[:, None, None, None]

    return run


def motion_to_diffusers(sd):
    """AnimateDiff's names -> the diffusers MotionAdapter's (its converter:
    no temporal_transformer, attn1/attn2, norm1..3; no pos_encoder.pe)."""
    out = {}
    for k, v in sd.items():
        if ".pos_encoder." in k:
            continue
        k = (k.replace(".temporal_transformer", "")
             .replace(".attention_blocks.0.", ".attn1.")
             .replace(".attention_blocks.1.", ".attn2.")
             .replace(".norms.0.", ".norm1.").replace(".norms.1.", ".norm2.")
             .replace(".ff_norm.", ".norm3."))
        out[k] = v
    return out


def motion_state(mm):
    """mm's parameters in AnimateDiff's own checkpoint naming (its
    attention's layers sit directly in attention_blocks.N)."""
    return {k.replace(".attn.", "."): v.detach()
            for k, v in mm.state_dict().items()}


def load_motion(sd, cfg, dtype=torch.float64):
    """A MotionAdapter from AnimateDiff's names (with pos_encoder.pe)."""
    mid = any(k.startswith("mid_block.") for k in sd)
    pe = [v for k, v in sd.items() if k.endswith("pos_encoder.pe")]
    mm = MotionAdapter(cfg, mid=mid,
                       max_len=int(np.asarray(pe[0]).shape[1]) if pe else 32)
    named = {}
    for k, v in sd.items():
        parts = k.split(".")
        if "attention_blocks" in parts:
            i = parts.index("attention_blocks") + 2
            if parts[i] != "pos_encoder":
                parts.insert(i, "attn")
        named[".".join(parts)] = v
    return _load(mm, named, dtype)


# ======================================================================= VAE


class VAEResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class VAEAttnBlock(nn.Module):
    """Single-head self-attention over pixels, 1x1 conv projections."""

    def __init__(self, ch):
        super().__init__()
        self.norm = nn.GroupNorm(32, ch, eps=1e-6)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)  # [b, hw, c]
        k = self.k(h).reshape(b, c, hh * ww)                  # [b, c, hw]
        v = self.v(h).reshape(b, c, hh * ww)
        w = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=-1)  # [b, hw, hw]
        h = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class VAEDownsample(nn.Module):
    """Pad right and bottom by one, 3x3 conv with stride 2, no padding."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class VAEMid(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.block_1 = VAEResnetBlock(ch, ch)
        self.attn_1 = VAEAttnBlock(ch)
        self.block_2 = VAEResnetBlock(ch, ch)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class VAEEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch = cfg.base_channels
        self.conv_in = nn.Conv2d(cfg.image_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for level, mult in enumerate(cfg.channel_mult):
            m = nn.Module()
            m.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                m.block.append(VAEResnetBlock(cin, ch * mult))
                cin = ch * mult
            if level != cfg.levels - 1:
                m.downsample = VAEDownsample(cin)
            self.down.append(m)
        self.mid = VAEMid(cin)
        self.norm_out = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for m in self.down:
            for blk in m.block:
                h = blk(h)
            if hasattr(m, "downsample"):
                h = m.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAEDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch = cfg.base_channels
        cin = ch * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, cin, 3, padding=1)
        self.mid = VAEMid(cin)
        ups = [None] * cfg.levels  # up[level], built from the deepest level
        for level in reversed(range(cfg.levels)):
            m = nn.Module()
            m.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                cout = ch * cfg.channel_mult[level]
                m.block.append(VAEResnetBlock(cin, cout))
                cin = cout
            if level != 0:
                m.upsample = Upsample(cin)
            ups[level] = m
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, cfg.image_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for m in reversed(self.up):
            for blk in m.block:
                h = blk(h)
            if hasattr(m, "upsample"):
                h = m.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        z = cfg.latent_channels
        self.encoder = VAEEncoder(cfg)
        self.decoder = VAEDecoder(cfg)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def encode(self, rgb):
        """rgb in [0, 1], [B, 3, H, W] -> latent (mean * 0.18215)."""
        moments = self.quant_conv(self.encoder(2 * rgb - 1))
        return moments[:, :self.cfg.latent_channels] * LATENT_SCALE

    def decode_raw(self, latent):
        """latent -> raw decoder output (about -1..1), before the clamp."""
        return self.decoder(self.post_quant_conv(latent / LATENT_SCALE))

    def decode(self, latent):
        """latent -> image in [0, 1]."""
        return torch.clamp((self.decode_raw(latent) + 1) / 2, 0, 1)


def to_rgb8(image01):
    """[1, 3, H, W] in [0, 1] -> uint8 [H, W, 3], round(255 v) (half up)."""
    v = image01[0].permute(1, 2, 0).double().numpy()
    return np.floor(v * 255.0 + 0.5).astype(np.uint8)


# ================================================== loading and conversion


def _sub(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _as_tensor(v, dtype):
    return torch.as_tensor(np.asarray(v)).to(dtype)


def _load(module, sd, dtype):
    module.to(dtype)
    module.load_state_dict({k: _as_tensor(v, dtype) for k, v in sd.items()},
                           strict=True)
    return module.eval()


def original_state(clip, unet, vae):
    """The parts' parameters in the original single-file naming: {name:
    tensor} (the inverse of load_clip/load_unet/load_vae)."""
    sd = {}
    for module, prefix in ((clip, CLIP_PREFIX), (unet, UNET_PREFIX),
                           (vae, VAE_PREFIX)):
        for k, v in module.state_dict().items():
            sd[prefix + k] = v.detach()
    return sd


def load_clip(sd, cfg, dtype=torch.float64):
    """Text encoder from original names (position_ids, a buffer some
    checkpoints carry, is ignored)."""
    sub = _sub(sd, CLIP_PREFIX)
    sub.pop("text_model.embeddings.position_ids", None)
    return _load(CLIPTextModel(cfg), sub, dtype)


def load_unet(sd, cfg, dtype=torch.float64):
    return _load(UNetModel(cfg), _sub(sd, UNET_PREFIX), dtype)


def load_vae(sd, cfg, dtype=torch.float64):
    return _load(AutoencoderKL(cfg), _sub(sd, VAE_PREFIX), dtype)


# ---------------------------------------- original <-> diffusers mapping

_UNET_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1",
             "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
             "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2",
            "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
             "proj_out": "to_out.0"}
# Older diffusers files (e.g. the original SD 1.5 upload) name the VAE's
# mid-block attention query/key/value/proj_attn; from_diffusers accepts both.
_VAE_ATTN_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v",
                    "proj_attn": "to_out.0"}


def _unet_modules(cfg):
    """[(original module path, diffusers module path, renames)] for the UNet;
    `renames` maps the first part(s) of the rest of a name, None = same."""
    n, last = cfg.num_res_blocks, cfg.levels - 1
    mods = [("time_embed.0", "time_embedding.linear_1", None),
            ("time_embed.2", "time_embedding.linear_2", None),
            ("input_blocks.0.0", "conv_in", None),
            ("out.0", "conv_norm_out", None),
            ("out.2", "conv_out", None),
            ("middle_block.0", "mid_block.resnets.0", _UNET_RES),
            ("middle_block.1", "mid_block.attentions.0", None),
            ("middle_block.2", "mid_block.resnets.1", _UNET_RES)]
    idx = 1
    for lv in range(cfg.levels):
        for j in range(n):
            mods.append((f"input_blocks.{idx}.0",
                         f"down_blocks.{lv}.resnets.{j}", _UNET_RES))
            if lv in cfg.attention_levels:
                mods.append((f"input_blocks.{idx}.1",
                             f"down_blocks.{lv}.attentions.{j}", None))
            idx += 1
        if lv != last:
            mods.append((f"input_blocks.{idx}.0.op",
                         f"down_blocks.{lv}.downsamplers.0.conv", None))
            idx += 1
    idx = 0
    for i in range(cfg.levels):  # diffusers up block i = level last - i
        lv = last - i
        attn = lv in cfg.attention_levels
        for j in range(n + 1):
            mods.append((f"output_blocks.{idx}.0",
                         f"up_blocks.{i}.resnets.{j}", _UNET_RES))
            if attn:
                mods.append((f"output_blocks.{idx}.1",
                             f"up_blocks.{i}.attentions.{j}", None))
            if lv != 0 and j == n:
                mods.append((f"output_blocks.{idx}.{2 if attn else 1}.conv",
                             f"up_blocks.{i}.upsamplers.0.conv", None))
            idx += 1
    return mods


def _vae_modules(cfg):
    mods = [("quant_conv", "quant_conv", None),
            ("post_quant_conv", "post_quant_conv", None)]
    for part in ("encoder", "decoder"):
        mods += [(f"{part}.conv_in", f"{part}.conv_in", None),
                 (f"{part}.norm_out", f"{part}.conv_norm_out", None),
                 (f"{part}.conv_out", f"{part}.conv_out", None),
                 (f"{part}.mid.block_1", f"{part}.mid_block.resnets.0",
                  _VAE_RES),
                 (f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0",
                  _VAE_ATTN),
                 (f"{part}.mid.block_2", f"{part}.mid_block.resnets.1",
                  _VAE_RES)]
    last = cfg.levels - 1
    for lv in range(cfg.levels):
        for j in range(cfg.num_res_blocks):
            mods.append((f"encoder.down.{lv}.block.{j}",
                         f"encoder.down_blocks.{lv}.resnets.{j}", _VAE_RES))
        if lv != last:
            mods.append((f"encoder.down.{lv}.downsample.conv",
                         f"encoder.down_blocks.{lv}.downsamplers.0.conv",
                         None))
        i = last - lv  # diffusers decoder up block i = original level
        for j in range(cfg.num_res_blocks + 1):
            mods.append((f"decoder.up.{lv}.block.{j}",
                         f"decoder.up_blocks.{i}.resnets.{j}", _VAE_RES))
        if lv != 0:
            mods.append((f"decoder.up.{lv}.upsample.conv",
                         f"decoder.up_blocks.{i}.upsamplers.0.conv", None))
    return mods


def _map_name(name, mods):
    """Map one local name through a module table; None if no entry."""
    for src, dst, renames in mods:
        if not name.startswith(src + "."):
            continue
        rest = name[len(src) + 1:]
        if renames is not None:
            head, _, leaf = rest.rpartition(".")
            if head not in renames:
                raise KeyError(f"unexpected parameter {name}")
            rest = renames[head] + "." + leaf
        return dst + "." + rest
    return None


def _invert(mods):
    inv = []
    for src, dst, renames in mods:
        inv.append((dst, src, None if renames is None
                    else {v: k for k, v in renames.items()}))
    return inv


def _is_vae_attn_weight(diffusers_name):
    return (".mid_block.attentions.0." in diffusers_name
            and diffusers_name.endswith("weight")
            and "group_norm" not in diffusers_name)


def _modern_vae_name(name):
    """Legacy VAE attention names -> to_q/to_k/to_v/to_out.0."""
    head = ".mid_block.attentions.0."
    if head in name:
        pre, rest = name.split(head)
        part, _, leaf = rest.partition(".")
        if part in _VAE_ATTN_LEGACY:
            return pre + head + _VAE_ATTN_LEGACY[part] + "." + leaf
    return name


def to_diffusers(sd, cfg):
    """Original single-file dict -> diffusers folder dict (names prefixed
    `unet/`, `vae/`, `text_encoder/`). Other tensors (EMA, position_ids...)
    are dropped; an unmapped UNet/VAE/CLIP name is an error."""
    out = {}
    tables = [(UNET_PREFIX, "unet/", _unet_modules(cfg.unet)),
              (VAE_PREFIX, "vae/", _vae_modules(cfg.vae))]
    for name, v in sd.items():
        if name.startswith(CLIP_PREFIX + "text_model."):
            local = name[len(CLIP_PREFIX):]
            if local != "text_model.embeddings.position_ids":
                out["text_encoder/" + local] = v
            continue
        for prefix, folder, mods in tables:
            if name.startswith(prefix):
                mapped = _map_name(name[len(prefix):], mods)
                if mapped is None:
                    raise KeyError(f"no diffusers name for {name}")
                if folder == "vae/" and _is_vae_attn_weight(mapped):
                    v = np.asarray(v).reshape(v.shape[0], v.shape[1])
                out[folder + mapped] = v
    return out


def from_diffusers(d, cfg):
    """Diffusers folder dict (prefixed names) -> original single-file names."""
    out = {}
    tables = [("unet/", UNET_PREFIX, _invert(_unet_modules(cfg.unet))),
              ("vae/", VAE_PREFIX, _invert(_vae_modules(cfg.vae)))]
    for name, v in d.items():
        if name.startswith("text_encoder/"):
            local = name[len("text_encoder/"):]
            if local != "text_model.embeddings.position_ids":
                out[CLIP_PREFIX + local] = v
            continue
        for folder, prefix, mods in tables:
            if name.startswith(folder):
                local = name[len(folder):]
                if folder == "vae/":
                    local = _modern_vae_name(local)
                mapped = _map_name(local, mods)
                if mapped is None:
                    raise KeyError(f"no original name for {name}")
                if folder == "vae/" and _is_vae_attn_weight(local):
                    v = np.asarray(v).reshape(v.shape[0], v.shape[1], 1, 1)
                out[prefix + mapped] = v
    return out


# ------------------------------------------- sizes from shapes (the doc)


def infer_config(sd):
    """Read an SDConfig from tensor shapes in original naming, following the
    doc's table (heads etc. by the fixed rules)."""
    clip_tm = CLIP_PREFIX + "text_model."
    tok = sd[clip_tm + "embeddings.token_embedding.weight"]
    layers = 0
    while clip_tm + f"encoder.layers.{layers}.mlp.fc1.weight" in sd:
        layers += 1
    fc1 = sd[clip_tm + "encoder.layers.0.mlp.fc1.weight"]
    clip = ClipConfig(
        vocab_size=tok.shape[0], width=tok.shape[1], layers=layers,
        positions=sd[clip_tm + "embeddings.position_embedding.weight"]
        .shape[0], mlp_ratio=fc1.shape[0] // tok.shape[1])

    u = _sub(sd, UNET_PREFIX)
    conv_in = u["input_blocks.0.0.weight"]
    mc = conv_in.shape[0]
    mults, attn, nres, level, count = [], [], None, 0, 0
    depth, ctx, linear = 1, None, None
    i = 1
    while f"input_blocks.{i}.0.op.weight" in u or \
            f"input_blocks.{i}.0.in_layers.2.weight" in u:
        if f"input_blocks.{i}.0.op.weight" in u:  # downsample ends a level
            nres = count if nres is None else nres
            level, count = level + 1, 0
        else:
            width = u[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]
            if count == 0:
                mults.append(width // mc)
            count += 1
            pin = f"input_blocks.{i}.1.proj_in.weight"
            if pin in u:
                if level not in attn:
                    attn.append(level)
                linear = u[pin].ndim == 2
                ctx = u[f"input_blocks.{i}.1.transformer_blocks.0.attn2.to_k"
                        ".weight"].shape[1]
                depth = 0
                while (f"input_blocks.{i}.1.transformer_blocks.{depth}"
                       ".norm1.weight") in u:
                    depth += 1
        i += 1
    nres = count if nres is None else nres
    if ctx is None:  # attention only in the middle block
        ctx = u["middle_block.1.transformer_blocks.0.attn2.to_k.weight"] \
            .shape[1]
        linear = u["middle_block.1.proj_in.weight"].ndim == 2
    unet = UNetConfig(
        in_channels=conv_in.shape[1], out_channels=u["out.2.weight"].shape[0],
        model_channels=mc, channel_mult=tuple(mults),
        attention_levels=tuple(attn), num_res_blocks=nres,
        transformer_depth=depth, context_dim=ctx, linear_proj=linear)

    v = _sub(sd, VAE_PREFIX)
    base = v["encoder.conv_in.weight"].shape[0]
    vmults = []
    while f"encoder.down.{len(vmults)}.block.0.conv1.weight" in v:
        vmults.append(v[f"encoder.down.{len(vmults)}.block.0.conv1.weight"]
                      .shape[0] // base)
    vres = 0
    while f"encoder.down.0.block.{vres}.conv1.weight" in v:
        vres += 1
    vae = VAEConfig(
        base_channels=base, channel_mult=tuple(vmults), num_res_blocks=vres,
        latent_channels=v["post_quant_conv.weight"].shape[0],
        image_channels=v["encoder.conv_in.weight"].shape[1])
    return SDConfig(clip=clip, unet=unet, vae=vae)


# ============================================================ noise schedule


class Schedule:
    """scaled_linear betas, alphas_cumprod, sigmas and k-diffusion's
    continuous t <-> sigma (log-sigma interpolation), all float64."""

    def __init__(self, n=1000, beta_start=0.00085, beta_end=0.012):
        betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n,
                            dtype=np.float64) ** 2
        self.n = n
        self.alphas_cumprod = np.cumprod(1.0 - betas)
        self.sigmas = np.sqrt((1.0 - self.alphas_cumprod)
                              / self.alphas_cumprod)
        self.log_sigmas = np.log(self.sigmas)

    @property
    def sigma_min(self):
        return float(self.sigmas[0])

    @property
    def sigma_max(self):
        return float(self.sigmas[-1])

    def sigma(self, t):
        """Continuous t (0..n-1) -> sigma."""
        t = np.asarray(t, dtype=np.float64)
        lo = np.floor(t).astype(np.int64)
        hi = np.ceil(t).astype(np.int64)
        w = t - lo
        return np.exp((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi])

    def t(self, sigma):
        """sigma -> continuous t, clamped to 0..n-1."""
        ls = np.log(np.asarray(sigma, dtype=np.float64))
        lo = np.clip(np.searchsorted(self.log_sigmas, ls, side="right") - 1,
                     0, self.n - 2)
        a, b = self.log_sigmas[lo], self.log_sigmas[lo + 1]
        w = np.clip((ls - a) / (b - a), 0.0, 1.0)
        return lo + w


K_SAMPLERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras")
SAMPLERS = K_SAMPLERS + ("ddim",)


def get_sigmas(schedule, sampler, n):
    """The n-step sigmas of a k-sampler, ending with 0 (n + 1 values)."""
    if sampler == "dpmpp_2m_karras":
        ramp = np.linspace(0.0, 1.0, n)
        lo = schedule.sigma_min ** (1 / 7)
        hi = schedule.sigma_max ** (1 / 7)
        sig = (hi + ramp * (lo - hi)) ** 7
    elif sampler in K_SAMPLERS:
        sig = schedule.sigma(np.linspace(schedule.n - 1, 0, n))
    else:
        raise ValueError(sampler)
    return np.append(sig, 0.0)


def ddim_timesteps(n, train_steps=1000):
    """diffusers DDIM, "leading" spacing, steps_offset 1."""
    step = train_steps // n
    return np.array([(n - 1 - j) * step + 1 for j in range(n)],
                    dtype=np.int64)


# ===================================================================== noise

_G = np.uint64(0x9E3779B97F4A7C15)


def _mix(z):
    """splitmix64's finalizer, uint64 wraparound."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z ^ (z >> np.uint64(30))
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> np.uint64(27))
        z = z * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def noise(seed, stream, shape):
    """The doc's generator: float32 array of `shape` (C order), element j
    from a Box-Muller pair of splitmix64 draws."""
    count = int(np.prod(shape))
    with np.errstate(over="ignore"):
        s = np.uint64(seed % (1 << 64))
        key = _mix(s + _G * np.uint64(stream + 1))
        j = np.arange(count, dtype=np.uint64)
        p = j // np.uint64(2)
        a = _mix(key + _G * (np.uint64(2) * p + np.uint64(1)))
        b = _mix(key + _G * (np.uint64(2) * p + np.uint64(2)))
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
    u2 = (b >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    r = np.sqrt(-2.0 * np.log(u1))
    even = (j % np.uint64(2)) == 0
    val = np.where(even, r * np.cos(2 * np.pi * u2),
                   r * np.sin(2 * np.pi * u2))
    return val.astype(np.float32).reshape(shape)


def batch_noise(seed, stream, shape, dtype=torch.float64, device=None):
    """[B, C, H, W] noise: batch item b uses seed + b."""
    return torch.stack([torch.from_numpy(noise(seed + b, stream, shape[1:]))
                        for b in range(shape[0])]).to(device=device,
                                                       dtype=dtype)


# ================================================================== samplers


def guided_model(unet, cond, uncond, cfg):
    """Model output with classifier-free guidance: one batch of 2B,
    unconditional first; cfg = 1 runs the conditional half only."""

    def run(x, t):
        b = x.shape[0]
        tt = torch.full((b,), float(t), dtype=x.dtype, device=x.device)
        if cfg == 1:
            return unet(x, tt, cond.expand(b, -1, -1))
        ctx = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)])
        out = unet(torch.cat([x, x]), torch.cat([tt, tt]), ctx)
        u, c = out[:b], out[b:]
        return u + cfg * (c - u)

    return run


def k_denoiser(model, schedule, prediction="eps"):
    """denoised(x, sigma) from a model output function (eps or v)."""

    def denoise(x, sigma):
        c_in = 1.0 / math.sqrt(sigma ** 2 + 1)
        out = model(x * c_in, float(schedule.t(sigma)))
        if prediction == "v":
            return (x / (sigma ** 2 + 1)
                    - sigma / math.sqrt(sigma ** 2 + 1) * out)
        return x - sigma * out

    return denoise


def sample_k(sampler, denoise, sigmas, x, step_noise=None):
    """Run a k-diffusion sampler over `sigmas` starting from x.
    step_noise(i) gives euler_a's noise for step i (stream 1 + i)."""
    d_prev, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s1 = float(sigmas[i]), float(sigmas[i + 1])
        den = denoise(x, s)
        if sampler == "euler":
            x = x + (x - den) / s * (s1 - s)
        elif sampler == "euler_a":
            up = min(s1, math.sqrt(s1 ** 2 * (s ** 2 - s1 ** 2) / s ** 2))
            down = math.sqrt(s1 ** 2 - up ** 2)
            x = x + (x - den) / s * (down - s)
            if s1 > 0:
                x = x + step_noise(i) * up
        elif sampler in ("dpmpp_2m", "dpmpp_2m_karras"):
            if s1 == 0:
                x = den
            else:
                h = -math.log(s1) + math.log(s)
                if d_prev is None:
                    d = den
                else:
                    r = h_last / h
                    d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * d_prev
                x = (s1 / s) * x - math.expm1(-h) * d
                h_last = h
            d_prev = den
        else:
            raise ValueError(sampler)
    return x


def sample_ddim(model, schedule, n, x, prediction="eps", start=0):
    """diffusers DDIM (eta 0, set_alpha_to_one False) over the n-step
    timesteps from index `start` (img2img runs a tail). The model gets the
    integer timestep and no input scaling."""
    ac = schedule.alphas_cumprod
    step = schedule.n // n
    for t in ddim_timesteps(n, schedule.n)[start:]:
        t = int(t)
        prev = t - step
        a = float(ac[t])
        a_prev = float(ac[prev]) if prev >= 0 else float(ac[0])
        out = model(x, float(t))
        if prediction == "v":
            eps = math.sqrt(a) * out + math.sqrt(1 - a) * x
            x0 = math.sqrt(a) * x - math.sqrt(1 - a) * out
        else:
            eps = out
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def img2img_steps(n, strength):
    """Steps run by img2img: k = floor(strength * n + 1e-6)."""
    return int(math.floor(strength * n + 1e-6))


def generate(unet, schedule, sampler, cond, uncond, cfg, steps, seed,
             shape, prediction="eps", init=None, strength=1.0,
             dtype=torch.float64):
    """Sample a latent of `shape` ([B, C, h, w]).

    txt2img when `init` is None; img2img from `init` (a latent) otherwise,
    running the last floor(strength * steps + 1e-6) steps. Noise: stream 0
    of `seed` (+ b per batch item); euler_a's step i uses stream 1 + i,
    i counted from the first step actually run. Runs on `cond`'s device.
    """
    device = cond.device
    model = guided_model(unet, cond.to(dtype), uncond.to(dtype), cfg)
    x0 = batch_noise(seed, 0, shape, dtype, device)
    k = steps if init is None else img2img_steps(steps, strength)
    if init is not None and k == 0:
        return init.to(dtype)
    start = steps - k
    if sampler == "ddim":
        ts = ddim_timesteps(steps)
        if init is None:
            x = x0
        else:
            a = float(schedule.alphas_cumprod[ts[start]])
            x = math.sqrt(a) * init.to(dtype) + math.sqrt(1 - a) * x0
        return sample_ddim(model, schedule, steps, x, prediction, start)
    sigmas = get_sigmas(schedule, sampler, steps)[start:]
    x = x0 * float(sigmas[0]) if init is None else \
        init.to(dtype) + x0 * float(sigmas[0])
    return sample_k(sampler, k_denoiser(model, schedule, prediction),
                    sigmas, x,
                    lambda i: batch_noise(seed, 1 + i, shape, dtype,
                                          device))
