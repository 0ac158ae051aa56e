#!/usr/bin/env python3
"""txt2img and img2img through a real gpuhostd on the CPU device, with the
tiny SD 1.x checkpoint of tests/data/sd-tiny (stdlib only).

- `gpuhostctl generate txt2img` writes a PNG whose pixels equal the PyTorch
  reference's image for the same prompt, seed and sampler (within 1 of 255),
  and whose "parameters" text chunk carries the job's parameters in A1111's
  format; the diffusers folder gives the same image.
- img2img at strength 0 returns its input round-tripped through the VAE:
  the same pixels as gpuhost-sd's vae-encode then vae-decode.
- A checkpoint missing a tensor fails the job with that tensor's name.

Usage: test-sd-e2e.py GPUHOSTD GPUHOSTCTL WORKER PLUGIN_DIR GPUHOST_SD FIXTURES
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
sys.dont_write_bytecode = True
from png import read as read_png  # noqa: E402
from tensorfiles import npy_floats, st_read, st_write, st_write_f32  # noqa: E402

GPUHOSTD, CTL, WORKER, PLUGINS, SD, FIX = (os.path.abspath(a) for a in sys.argv[1:7])


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def max_diff(a, b):
    if len(a) != len(b):
        fail("sizes differ: %d and %d" % (len(a), len(b)))
    return max(abs(x - y) for x, y in zip(a, b))


def main():
    tmp = tempfile.mkdtemp(prefix="gh-sd-e2e-")
    plugins = os.path.join(tmp, "plugins")
    os.mkdir(plugins)
    for p in ("txt2img.so", "img2img.so"):
        shutil.copy(os.path.join(PLUGINS, p), plugins)
        os.chmod(os.path.join(plugins, p), 0o644)
    # A broken copy: the single file without one tensor.
    tensors = st_read(os.path.join(FIX, "sd-tiny.safetensors"))
    victim = "model.diffusion_model.middle_block.1.proj_out.weight"
    st_write(os.path.join(tmp, "broken.safetensors"), {k: v for k, v in tensors.items() if k != victim})
    sock = os.path.join(tmp, "gpuhost.sock")
    conf = os.path.join(tmp, "gpuhost.conf")
    tok = os.path.join(FIX, "sd-tiny-diffusers", "tokenizer")
    open(conf, "w").write(
        "[socket]\npath = %s\n[devices]\ncpu_memory = 256M\nslab_size = 2M\n"
        "[workers]\nexecutable = %s\nplugin_directory = %s\ncpu_threads = 2\n"
        "[model tiny]\npath = %s\ntokenizer = %s\n"
        "[model tinyd]\npath = %s\n"
        "[model broken]\npath = %s\ntokenizer = %s\n"
        % (sock, WORKER, plugins, os.path.join(FIX, "sd-tiny.safetensors"), tok,
           os.path.join(FIX, "sd-tiny-diffusers"), os.path.join(tmp, "broken.safetensors"), tok))
    log = open(os.path.join(tmp, "daemon.log"), "w")
    daemon = subprocess.Popen([GPUHOSTD, "-c", conf], stderr=log)
    try:
        # up once its worker has announced the pipelines (the socket alone
        # comes first: a job then would find no txt2img yet)
        for _ in range(600):
            if os.path.exists(sock) and "txt2img" in ctl(sock, "pipelines", check=False).stdout:
                break
            if daemon.poll() is not None:
                break
            time.sleep(0.05)
        run_checks(tmp, sock)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
        log.close()
        with open(os.path.join(tmp, "daemon.log")) as f:
            tail = f.readlines()[-30:]
        if os.environ.get("GH_KEEP"):
            print("kept", tmp)
        else:
            shutil.rmtree(tmp)
    # a clean exit: nothing leaked (sanitizer builds exit non-zero on a leak)
    if code != 0:
        fail("gpuhostd exited with %d:\n%s" % (code, "".join(tail)))


def ctl(sock, *args, check=True):
    r = subprocess.run([CTL, "--socket", sock] + list(args), capture_output=True, text=True, timeout=300)
    if check and r.returncode:
        fail("gpuhostctl %s: %s%s" % (" ".join(args), r.stdout, r.stderr))
    return r


def run_checks(tmp, sock):
    expected = st_read(os.path.join(FIX, "expected.safetensors"))
    settings = json.load(open(os.path.join(FIX, "expected.json")))["txt2img"]
    want = expected["txt2img.image"][1]
    for model in ("tiny", "tinyd"):
        out = os.path.join(tmp, model + ".png")
        ctl(sock, "generate", "txt2img", "--param", "model=" + model, "--param", "prompt=" + settings["prompt"],
            "--param", "negative_prompt=" + settings["negative"], "--param", "width=64", "--param", "height=64",
            "--param", "steps=%d" % settings["steps"], "--param", "sampler=" + settings["sampler"],
            "--param", "cfg_scale=%g" % settings["cfg"], "--param", "seed=%d" % settings["seed"], "-o", out)
        w, h, px, texts = read_png(out)
        d = max_diff(px, want)
        print("txt2img %s: %dx%d, max difference from the reference %d of 255" % (model, w, h, d))
        if (w, h) != (64, 64) or d > 1:
            fail("txt2img pixels differ from the reference")
        params = texts.get("parameters", "")
        print("parameters: " + params.replace("\n", " | "))
        for part in (settings["prompt"], "Steps: 3", "Sampler: Euler", "CFG scale: 7.5", "Seed: 1234",
                     "Size: 64x64", "Model: " + model):
            if part not in params:
                fail("the parameters chunk lacks %r" % part)
        if model == "tiny" and "Model hash: " not in params:
            fail("no model hash in the parameters chunk")
    # img2img at strength 0: the VAE round trip of the input.
    src = os.path.join(tmp, "tiny.png")
    out = os.path.join(tmp, "roundtrip.png")
    ctl(sock, "generate", "img2img", "--param", "model=tiny", "--param", "image=@" + src, "--param", "strength=0",
        "--param", "prompt=anything", "-o", out)
    _, _, px, _ = read_png(out)
    _, _, inp, _ = read_png(src)
    img = [0.0] * (3 * 64 * 64)
    for i in range(64 * 64):
        for c in range(3):
            img[c * 4096 + i] = inp[i * 3 + c] / 255.0
    st_write_f32(os.path.join(tmp, "img.safetensors"), "image", [1, 3, 64, 64], img)
    model = os.path.join(FIX, "sd-tiny.safetensors")
    subprocess.run([SD, "--model", model, "vae-encode", "--image", os.path.join(tmp, "img.safetensors") + ":image",
                    "-o", os.path.join(tmp, "lat.npy")], check=True)
    st_write_f32(os.path.join(tmp, "lat.safetensors"), "latent", [1, 4, 8, 8], npy_floats(os.path.join(tmp, "lat.npy")))
    subprocess.run([SD, "--model", model, "vae-decode", "--latent", os.path.join(tmp, "lat.safetensors") + ":latent",
                    "-o", os.path.join(tmp, "dec.npy")], check=True)
    dec = npy_floats(os.path.join(tmp, "dec.npy"))
    rt = bytearray(3 * 4096)
    for i in range(4096):
        for c in range(3):
            v = min(max((dec[c * 4096 + i] + 1) / 2, 0.0), 1.0)
            rt[i * 3 + c] = int(v * 255 + 0.5)
    d = max_diff(px, rt)
    print("img2img strength 0: max difference from the VAE round trip %d of 255 (from the input %d)"
          % (d, max_diff(px, inp)))
    if d > 1:
        fail("img2img at strength 0 is not the VAE round trip")
    # A broken checkpoint: refused, naming the tensor.
    r = ctl(sock, "generate", "txt2img", "--param", "model=broken", "--param", "width=64", "--param", "height=64",
            "-o", os.path.join(tmp, "x.png"), check=False)
    msg = r.stdout + r.stderr
    print("broken checkpoint: " + msg.strip().splitlines()[-1] if msg.strip() else "(no message)")
    if r.returncode == 0 or victim_name() not in msg:
        fail("the broken checkpoint's error does not name the tensor: " + msg)
    print("ok")


def victim_name():
    return "model.diffusion_model.middle_block.1.proj_out.weight"


if __name__ == "__main__":
    main()
