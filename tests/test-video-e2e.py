#!/usr/bin/env python3
"""The video plugin through a real gpuhostd on the CPU device, with the tiny
SD 1.x checkpoint and the tiny motion module of tests/data/sd-tiny (stdlib
only; the MP4 is decoded by video-probe, FFmpeg's libraries).

- `gpuhostctl generate video -o clip.mp4`: a playable H.264 MP4 of 8 frames
  of 64x64 at 8 fps whose metadata carries the parameters; its frames
  output equals the PyTorch reference's frames for the same prompt, seed
  and sampler (motion.sample.frames, within 1 of 255).
- The motion module in diffusers' layout gives the same frames.
- Sharing: a txt2img job and a video job at once on the one resident copy of
  the checkpoint: while both run, the store shows it with refcount 2 (and
  the motion module with 1), one copy on the device.
- format=frames: the frames alone, no MP4.
- Context windows: 12 frames on windows of 8 overlapping by 4 make a clip
  of 12 frames; an overlap of a whole window is refused.
- Admission: a clip whose planned workspace can never fit the device is
  refused at once.
- Bad requests: frames past the module's length, a motion module that is
  not one (the checkpoint itself), both refused with a reason.

Usage: test-video-e2e.py GPUHOSTD GPUHOSTCTL WORKER PLUGIN_DIR VIDEO_PROBE FIXTURES
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
sys.dont_write_bytecode = True
import ghdaemon  # noqa: E402
from tensorfiles import st_read  # noqa: E402

GPUHOSTD, CTL, WORKER, PLUGINS, PROBE, FIX = (os.path.abspath(a) for a in sys.argv[1:7])
PROMPT = "a red circle on a blue background"


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def ctl(sock, *args, check=True, timeout=300):
    r = subprocess.run([CTL, "--socket", sock] + list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        fail("gpuhostctl %s: %s%s" % (" ".join(args), r.stdout, r.stderr))
    return r


def video_args(motion, steps=3, frames=8, seed=1234, prompt=PROMPT, size=64):
    out = []
    for p in ("model=tiny", "motion_module=" + motion, "prompt=" + prompt, "negative_prompt=", "width=%d" % size,
              "height=%d" % size, "frames=%d" % frames, "fps=8", "steps=%d" % steps, "sampler=euler", "cfg_scale=7.5",
              "seed=%d" % seed):
        out += ["--param", p]
    return out


def check_clip(tmp, sock, motion, want):
    clip = os.path.join(tmp, motion + ".mp4")
    ctl(sock, "generate", "video", *video_args(motion), "-o", clip)
    probe = subprocess.run([PROBE, clip], capture_output=True, text=True)
    if probe.returncode:
        fail("video-probe: " + probe.stderr)
    info = json.loads(probe.stdout)
    print("%s: %s" % (motion, {k: v for k, v in info.items() if k != "meta"}), flush=True)
    if (info["width"], info["height"], info["frames"], info["codec"]) != (64, 64, 8, "h264") or \
            abs(info["fps"] - 8) > 0.01:
        fail("the clip is not 8 frames of 64x64 H.264 at 8 fps: %s" % info)
    meta = json.loads(info["meta"] or "{}")
    for k, v in (("prompt", PROMPT), ("seed", 1234), ("frames", 8), ("fps", 8), ("motion_module", motion),
                 ("model", "tiny"), ("sampler", "euler"), ("steps", 3)):
        if meta.get(k) != v:
            fail("the clip's metadata has %s=%r, not %r: %s" % (k, meta.get(k), v, info["meta"]))
    frames = os.path.join(tmp, motion + "-frames.mp4")  # the second output, raw RGB8
    got = open(frames, "rb").read()
    if len(got) != len(want):
        fail("frames output of %d bytes, %d expected" % (len(got), len(want)))
    d = max(abs(a - b) for a, b in zip(got, want))
    print("%s: frames' max difference from the reference %d of 255" % (motion, d), flush=True)
    if d > 1:
        fail("the frames differ from the reference")


def check_frames_only(tmp, sock, want):
    """format=frames: no MP4; the first (only) output is the frames."""
    out = os.path.join(tmp, "only.raw")
    ctl(sock, "generate", "video", *video_args("motion"), "--param", "format=frames", "-o", out)
    got = open(out, "rb").read()
    if len(got) != len(want) or max(abs(a - b) for a, b in zip(got, want)) > 1:
        fail("format=frames: %d bytes, not the reference's frames" % len(got))
    if os.path.exists(os.path.join(tmp, "only-frames.raw")):
        fail("format=frames made a second output")
    print("format=frames: the frames alone, %d bytes" % len(got), flush=True)


def check_windows(tmp, sock):
    """12 frames on context windows of 8 (the module is run on frames 0-7
    and 4-11): a clip of 12 frames, the windows in its metadata."""
    clip = os.path.join(tmp, "windows.mp4")
    args = video_args("motion", frames=12)
    ctl(sock, "generate", "video", *args, "--param", "context_frames=8", "--param", "context_overlap=4", "-o", clip)
    probe = subprocess.run([PROBE, clip], capture_output=True, text=True)
    info = json.loads(probe.stdout) if probe.returncode == 0 else {}
    print("context windows: %s" % {k: v for k, v in info.items() if k != "meta"}, flush=True)
    if info.get("frames") != 12:
        fail("12 frames on windows of 8: %s %s" % (info, probe.stderr))
    r = ctl(sock, "generate", "video", *args, "--param", "context_frames=8", "--param", "context_overlap=8",
            check=False)
    if r.returncode == 0 or "overlapping" not in r.stdout + r.stderr:
        fail("an overlap of a whole window should be refused: " + r.stdout + r.stderr)


def resident(sock, name):
    models = json.loads(ctl(sock, "models", "--json").stdout)
    for m in models.get("models", models if isinstance(models, list) else []):
        if m.get("name") == name:
            return m.get("resident") or m.get("residents") or []
    return []


def check_sharing(tmp, sock):
    """A video job and a txt2img job at once: one resident copy, refcount 2."""
    vid = ctl(sock, "generate", "video", *video_args("motion", steps=60), "--detach", "--json")
    img = ctl(sock, "generate", "txt2img", "--param", "model=tiny", "--param", "prompt=" + PROMPT,
              "--param", "width=64", "--param", "height=64", "--param", "steps=150", "--detach", "--json")
    ids = [json.loads(vid.stdout)["job"], json.loads(img.stdout)["job"]]
    seen = None
    deadline = time.time() + 120
    while time.time() < deadline and not seen:
        jobs = json.loads(ctl(sock, "jobs", "--json").stdout)
        jobs = jobs.get("jobs", jobs) if isinstance(jobs, dict) else jobs
        states = {j.get("job"): j.get("state") for j in jobs}
        if all(states.get(i) == "running" for i in ids):
            tiny, motion = resident(sock, "tiny"), resident(sock, "motion")
            if tiny and motion:
                seen = (tiny, motion)
        elif any(states.get(i) not in ("queued", "running", "estimating", None) for i in ids):
            break
        time.sleep(0.02)
    for i in ids:
        ctl(sock, "generate", "--wait", i, "--json", timeout=600)
    if not seen:
        fail("the two jobs never ran at once")
    tiny, motion = seen
    print("while both ran: tiny %s; motion %s" % (tiny, motion), flush=True)
    if len(tiny) != 1 or tiny[0].get("refcount") != 2:
        fail("the checkpoint should be one resident copy with refcount 2: %s" % tiny)
    if len(motion) != 1 or motion[0].get("refcount") != 1:
        fail("the motion module should be one resident copy with refcount 1: %s" % motion)


def check_refusals(sock):
    # a clip whose workspace (32 frames at 1024x1024: gigabytes) can never fit the
    # 512 MiB device: refused at once by admission control, not queued
    t0 = time.time()
    r = ctl(sock, "generate", "video", *video_args("motion", frames=32, size=1024), check=False, timeout=120)
    msg = (r.stdout + r.stderr).strip()
    print("32 frames at 1024x1024 on 512 MiB: %s (%.1f s)" % (msg.splitlines()[-1] if msg else "", time.time() - t0),
          flush=True)
    if r.returncode == 0 or "JobTooLarge" not in msg or "needs" not in msg:
        fail("a clip that can never fit should be refused with the reason: " + msg)
    r = ctl(sock, "generate", "video", *video_args("motion", frames=40), check=False)
    print("frames=40: " + (r.stdout + r.stderr).strip().splitlines()[-1], flush=True)
    if r.returncode == 0 or "frames" not in r.stdout + r.stderr:
        fail("frames=40 should be refused naming frames")
    r = ctl(sock, "generate", "video", *video_args("tiny"), check=False)
    msg = (r.stdout + r.stderr).strip()
    print("motion_module=tiny: " + (msg.splitlines()[-1] if msg else ""), flush=True)
    if r.returncode == 0 or "motion module" not in msg:
        fail("a checkpoint given as the motion module should be refused: " + msg)


def main():
    tmp = tempfile.mkdtemp(prefix="gh-video-e2e-")
    tok = os.path.join(FIX, "sd-tiny-diffusers", "tokenizer")
    models = ("[model tiny]\npath = %s\ntokenizer = %s\n[model motion]\npath = %s\n[model motiond]\npath = %s\n"
              % (os.path.join(FIX, "sd-tiny.safetensors"), tok, os.path.join(FIX, "motion-tiny.safetensors"),
                 os.path.join(FIX, "motion-tiny-diffusers.safetensors")))
    # the plugins, and the MP4 encoder module beside their folder as in the build and an install
    d = ghdaemon.Daemon(GPUHOSTD, CTL, WORKER, PLUGINS, os.path.join(tmp, "daemon"),
                        devices="cpu_memory = 512M\nslab_size = 2M\n", scheduler="jobs_per_device = 2\n",
                        workers="cpu_threads = 2\n", models=models, plugin_files=("txt2img.so", "video.so"))
    clean = False
    try:
        want = st_read(os.path.join(FIX, "motion-expected.safetensors"))["motion.sample.frames"][1]
        check_clip(tmp, d.sock, "motion", want)
        check_clip(tmp, d.sock, "motiond", want)
        check_frames_only(tmp, d.sock, want)
        check_windows(tmp, d.sock)
        check_sharing(tmp, d.sock)
        check_refusals(d.sock)
    finally:
        clean = d.stop()  # a clean exit: nothing leaked (sanitizer builds exit non-zero on a leak)
        tail = d.log_tail(30)
        if os.environ.get("GH_KEEP"):
            print("kept", tmp)
        else:
            shutil.rmtree(tmp)
    if not clean:
        fail("gpuhostd did not exit cleanly:\n" + tail)
    print("ok")


if __name__ == "__main__":
    main()
