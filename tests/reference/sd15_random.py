"""The full-size SD 1.5 checkpoint with seeded random weights, and what the
GPU benchmark (bench/bench-sd.py) and the GPU test
(tests/gpu/test-sd15-gpu.py) share around it (needs torch and numpy).

- FULL is SD 1.5's sizes (1.07 B parameters); SMALL a tiny configuration
  for checking the scripts on the CPU (its vocabulary covers the demo
  model's tokenizer, its VAE has SD's factor 8).
- checkpoint() makes the reference's modules at those sizes with
  PyTorch's default initialisation (seed 0), in the original single-file
  layout, fp16, once: the file is kept in a cache folder ($GH_SD15_DIR,
  else gh-sd15 in the system's temporary folder) under a name holding a
  stamp of everything that decides its content (the configuration, the
  sources of sd_ref.py and st.py, this maker, the torch and numpy
  versions), and reused while the stamp holds.
- motion_checkpoint() does the same for an AnimateDiff v2-style motion
  module at those sizes (a module after every res block, one in the mid
  block, a 32-frame encoding; 453 M parameters at full size) in
  AnimateDiff's own naming: fp16 weights, the pos_encoder.pe buffers fp32.
- use_sdpa() sends the reference's attention through
  scaled_dot_product_attention where torch has it (torch 2); exact_fp32()
  keeps TF32 out of fp32 reference results.
- Sampler polls a function in a thread (free device memory every ~5 ms,
  the daemon's ledger) and keeps the extremes; free_memory() is cuMemGetInfo's
  free bytes on the GPU, MemAvailable on the CPU.
"""

import glob
import hashlib
import inspect
import json
import os
import struct
import tempfile
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

import sd_ref as R
import st

FULL = R.SDConfig.sd15()
SMALL = R.SDConfig(
    clip=R.ClipConfig(vocab_size=1024, width=64, layers=1),
    unet=R.UNetConfig(model_channels=32, channel_mult=(1, 2),
                      attention_levels=(1,), num_res_blocks=1,
                      context_dim=64),
    vae=R.VAEConfig(base_channels=32, channel_mult=(1, 1, 1, 1),
                    num_res_blocks=1))

# Checkpoint tensor name prefixes of each part, for the byte counts.
PARTS = (("UNet", R.UNET_PREFIX), ("VAE", R.VAE_PREFIX),
         ("text encoder", R.CLIP_PREFIX))


def config(small):
    """(label, SDConfig) of the full-size or the small checkpoint."""
    return ("small", SMALL) if small else ("sd15", FULL)


def cache_dir():
    return os.environ.get("GH_SD15_DIR") or os.path.join(
        tempfile.gettempdir(), "gh-sd15")


def make_checkpoint(path, cfg):
    """Writes the checkpoint of |cfg| to |path|; returns its parameter
    count."""
    torch.manual_seed(0)
    state = R.original_state(R.CLIPTextModel(cfg.clip), R.UNetModel(cfg.unet),
                             R.AutoencoderKL(cfg.vae))
    st.save(path, {k: ("F16", v.half().numpy()) for k, v in state.items()},
            metadata={"format": "pt"}, exact=False)
    return sum(v.numel() for v in state.values())


def stamp(cfg, make=make_checkpoint):
    """A digest of everything that decides the checkpoint's bytes."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.to_json(), sort_keys=True).encode())
    h.update(("torch " + torch.__version__.split("+")[0] + " numpy " +
              np.__version__).encode())
    for mod in (R, st):
        with open(mod.__file__, "rb") as f:
            h.update(f.read())
    h.update(inspect.getsource(make).encode())
    return h.hexdigest()[:16]


def make_motion(path, cfg):
    """Writes a motion module for |cfg|'s UNet to |path| (PyTorch's default
    initialisation, seed 1); returns its parameter count."""
    torch.manual_seed(1)
    state = R.motion_state(R.MotionAdapter(cfg.unet, mid=True, max_len=32))
    st.save(path, {k: ("F32" if k.endswith(".pe") else "F16",
                       v.float().numpy() if k.endswith(".pe")
                       else v.half().numpy()) for k, v in state.items()},
            metadata={"format": "pt"}, exact=False)
    return sum(v.numel() for k, v in state.items() if not k.endswith(".pe"))


def motion_checkpoint(small=False, directory=None, log=print):
    """The cached motion module's path (as checkpoint())."""
    return checkpoint(small, directory, log, motion=True)


def checkpoint(small=False, directory=None, log=print, motion=False):
    """The cached checkpoint's path, made first if missing (written under a
    temporary name, then renamed; older stamps of the same label go)."""
    label, cfg = config(small)
    make = make_motion if motion else make_checkpoint
    label += "-motion" if motion else ""
    directory = directory or cache_dir()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "%s-random-%s.safetensors"
                        % (label, stamp(cfg, make)))
    if os.path.exists(path):
        log("checkpoint: reusing %s (%.2f GiB)"
            % (path, os.path.getsize(path) / 2**30))
        return path
    t0 = time.time()
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        n = make(tmp, cfg)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in glob.glob(os.path.join(directory,
                                      label + "-random-*.safetensors")):
        if old != path:
            os.unlink(old)
    log("checkpoint: made %s: %.3f B parameters, %.2f GiB, %.0f s"
        % (path, n / 1e9, os.path.getsize(path) / 2**30, time.time() - t0))
    return path


def torch_pipeline(spec, motion=None):
    """The benchmarks' PyTorch side of spec's checkpoint (a process of
    their own): the text encoder in fp32, the UNet (and the motion module
    of |motion|, a path) and the VAE in fp16 on CUDA (as a precision=fp16
    job runs them), fp32 on the CPU, the UNet and the VAE channels_last;
    the tokenizer of spec["tokenizer"]. Returns a namespace with clip,
    vae, unet, mm, half, tok, weights (bytes allocated on the GPU after
    loading) and decode (latent -> float32 image in 0..1)."""
    dev = spec["device"]
    _, cfg = config(spec["small"])
    w = weights(spec["checkpoint"])
    half = torch.float16 if dev == "cuda" else torch.float32
    out = type("TorchPipeline", (), {})()
    out.half, out.cfg = half, cfg
    out.clip = R.load_clip(w, cfg.clip, torch.float32).to(dev)
    out.vae = R.load_vae(w, cfg.vae, torch.float32).to(half).to(dev).to(
        memory_format=torch.channels_last)
    out.unet = R.load_unet(w, cfg.unet, torch.float32).to(half).to(dev).to(
        memory_format=torch.channels_last)
    del w
    out.mm = (R.load_motion(weights(motion), cfg.unet, torch.float32)
              .to(half).to(dev) if motion else None)
    if dev == "cuda":
        torch.cuda.synchronize()
    out.weights = torch.cuda.memory_allocated() if dev == "cuda" else None
    out.decode = (lambda lat: out.vae.decode(lat.to(
        dtype=half, memory_format=torch.channels_last)).float())
    out.tok = R.Tokenizer.from_files(
        os.path.join(spec["tokenizer"], "vocab.json"),
        os.path.join(spec["tokenizer"], "merges.txt"))
    return out


def part_bytes(path):
    """{part: bytes of its tensors} from the file's header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
    out = {name: 0 for name, _ in PARTS}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        for name, prefix in PARTS:
            if k.startswith(prefix):
                out[name] += v["data_offsets"][1] - v["data_offsets"][0]
    return out


def weights(path, prefix=None):
    """{name: float32 array} of the checkpoint (fp16 values, widened),
    optionally only the names starting with |prefix|."""
    return {k: v.astype(np.float32) for k, v in st.load(path)[0].items()
            if prefix is None or k.startswith(prefix)}


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


def use_sdpa():
    """Patches the reference's CrossAttention to use SDPA (torch 2);
    returns whether it did."""
    if not hasattr(F, "scaled_dot_product_attention"):
        return False
    R.CrossAttention.forward = sdpa_forward
    return True


def exact_fp32():
    """Reference results in real fp32: no TF32 in cuDNN's convolutions or
    in matmuls (torch's default lets cuDNN use it)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def rel_l2(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError("shape %s, %s expected" % (got.shape, want.shape))
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def free_memory(device):
    """Free bytes of |device|: cuMemGetInfo's on "cuda", the kernel's
    MemAvailable on "cpu" (system-wide, so only a rough figure)."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


class Sampler:
    """Calls fn() every |period| seconds in a thread while active (and
    once at start and stop); keeps the lowest and highest values."""

    def __init__(self, fn, period=0.005):
        self.fn, self.period = fn, period
        self.low = self.high = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = None
        self.error = None

    def _take(self):
        v = self.fn()
        self.low = v if self.low is None else min(self.low, v)
        self.high = v if self.high is None else max(self.high, v)
        self.samples += 1

    def _run(self):
        while not self._stop.wait(self.period):
            try:
                self._take()
            except Exception as e:  # noqa: BLE001 (reported by stop())
                self.error = e
                return

    def __enter__(self):
        self._take()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._take()
        if self.error is not None and exc[0] is None:
            raise self.error
        return False
