#!/usr/bin/env python3
"""The shipped demo model through a real gpuhostd on the CPU device, judged
by what its pictures show (stdlib only).

- For each prompt of PROMPTS and each seed of SEEDS, `gpuhostctl generate
  txt2img --model demo` writes a PNG; tests/demo/semantic.py checks from the
  pixels that the foreground colour, the background colour and the shape
  class are the prompt's. At least 90% of the pictures must pass all three
  (accuracy is printed, per picture and in total).
- The same seed gives the same pixels.
- The shipped [model demo] parameters make 64x64 the default size; a
  job's own width wins.
- img2img of the red circle with the prompt changed to green recolours the
  shape: the result's foreground is green, the background is still blue,
  and the shape is still a circle.
- Motion: the video pipeline with the shipped demo motion module
  (models/demo-motion, trained on shapes moving right) makes 8-frame
  clips of MOTION_PROMPTS. Every frame must show the prompt's colours,
  and its foreground centroid must move right at every frame, by at least
  MIN_TRAVEL pixels in all. Independent frames (the motion modules not
  run, or run wrong) would show the shape in the centre of each.

The daemon serves the model from its source folder with the [model demo]
and [model demo-motion] sections of the shipped configuration (as the build
configured it), only their paths changed.

GH_DEMO_DEVICES adds lines to the [devices] section (on a GPU machine,
"cpu = no" sends every job to the GPUs); GH_DEMO_PARAMETERS replaces the
model's parameters line. With GH_DEMO_GALLERY=DIR set, the
pictures and a contact sheet of them (gallery.png, one row per two prompts,
at twice the size) are written to DIR, and the clips as motion.png (one
row of frames per clip).

Usage: test-demo-e2e.py GPUHOSTD GPUHOSTCTL WORKER PLUGIN_DIR MODEL_DIR SHIPPED_CONF
"""
import configparser
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "demo"))
sys.path.insert(0, os.path.join(HERE, "reference"))
sys.dont_write_bytecode = True
import ghdaemon  # noqa: E402
import png  # noqa: E402
import semantic  # noqa: E402

GPUHOSTD, CTL, WORKER, PLUGINS, MODEL, SHIPPED = (os.path.abspath(a)
                                                  for a in sys.argv[1:7])
MOTION = os.path.join(os.path.dirname(MODEL), "demo-motion",
                      "demo-motion.safetensors")

PROMPTS = [
    "a red circle on a blue background",
    "a green square on a white background",
    "a yellow triangle on a purple background",
    "a white star on a black background",
    "an orange ring on a blue background",
    "a blue cross on a yellow background",
    "a purple circle on a green background",
    "a black square on an orange background",
    "a large red triangle on a white background",
    "a large yellow star on a blue background",
    "a green ring on a black background",
    "a white cross on a red background",
    "a blue circle on a yellow background, top left",
    "a large orange square on a purple background",
    "a purple star on a white background",
    "a red cross on a green background",
]
SEEDS = [7, 1234]
STEPS = 20
MIN_ACCURACY = 0.90
MOTION_PROMPTS = [("a red circle on a blue background", 7),
                  ("a yellow square on a purple background", 8)]
MOTION_FRAMES = 8
MIN_TRAVEL = 16.0  # pixels, first frame to last


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def shipped_demo_section(**override):
    """The shipped [model demo] section with MODEL as its path (and the
    keys of |override|), then [model demo-motion] with MOTION, as text."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(SHIPPED)
    for name in ("demo", "demo-motion"):
        if not ini.has_section("model " + name):
            fail(SHIPPED + " declares no [model %s]" % name)
    keys = dict(ini["model demo"], path=MODEL, **override)
    motion = dict(ini["model demo-motion"], path=MOTION)
    return ("[model demo]\n" + "".join("%s = %s\n" % kv for kv in keys.items())
            + "[model demo-motion]\n"
            + "".join("%s = %s\n" % kv for kv in motion.items()))


def env_parameters():
    """GH_DEMO_PARAMETERS, when set, replaces the shipped section's
    parameters (e.g. to add "precision": "fp16" on a GPU)."""
    v = os.environ.get("GH_DEMO_PARAMETERS")
    return {"parameters": v} if v else {}


def start(tmp, demo=None):
    """gpuhostd (ghdaemon) on the CPU device, 256 MiB, with the txt2img,
    img2img and video plugins and the shipped demo sections (or |demo|);
    GH_DEMO_DEVICES adds [devices] lines. Up once its workers offer all
    three pipelines."""
    try:
        return ghdaemon.Daemon(
            GPUHOSTD, CTL, WORKER, PLUGINS, tmp,
            devices="cpu_memory = 256M\nslab_size = 2M\n%s\n"
            % os.environ.get("GH_DEMO_DEVICES", ""),
            workers="cpu_threads = 2\n",
            models=demo or shipped_demo_section(**env_parameters()),
            plugin_files=("txt2img.so", "img2img.so", "video.so"))
    except ghdaemon.DaemonError as e:
        fail(str(e))


def ctl(d, *args):
    """gpuhostctl ARGS against |d|: its stdout (fails the test on an error)."""
    try:
        return d.ctl(*args, timeout=600)
    except ghdaemon.DaemonError as e:
        fail(str(e))


def txt2img(d, out, prompt, seed):
    ctl(d, "generate", "txt2img", "--model", "demo", "--param",
        "prompt=" + prompt, "--param", "seed=%d" % seed, "--param",
        "steps=%d" % STEPS, "-o", out)
    return png.read(out)


def clip_frames(d, out, prompt, seed):
    """An 8-frame clip of the demo model with its motion module, as RGB8
    frames (format=frames: the raw frames are the only output)."""
    ctl(d, "generate", "video", "--model", "demo", "--param",
        "motion_module=demo-motion", "--param", "prompt=" + prompt,
        "--param", "frames=%d" % MOTION_FRAMES, "--param", "format=frames",
        "--param", "sampler=euler", "--param", "cfg_scale=7",
        "--param", "seed=%d" % seed, "--param", "steps=%d" % STEPS,
        "-o", out)
    with open(out, "rb") as f:
        raw = f.read()
    size = 64 * 64 * 3
    if len(raw) != MOTION_FRAMES * size:
        fail("%s: %d bytes, %d frames of 64x64 RGB8 expected"
             % (out, len(raw), MOTION_FRAMES))
    return [raw[i * size:(i + 1) * size] for i in range(MOTION_FRAMES)]


def check_motion(d, tmp, gallery):
    """Each clip's frames show the prompt's colours, and the foreground's
    centroid moves right at every frame, MIN_TRAVEL pixels in all."""
    strips = []
    for prompt, seed in MOTION_PROMPTS:
        frames = clip_frames(d, os.path.join(tmp, "clip-%d.raw" % seed),
                             prompt, seed)
        xs, shapes_ok = [], 0
        for i, rgb in enumerate(frames):
            j = semantic.judge(prompt, 64, 64, rgb)
            if not (j["ok_fg"] and j["ok_bg"]) or not j["features"]:
                fail("%s, seed %d: frame %d does not show the prompt's "
                     "colours: %s" % (prompt, seed, i,
                                      json.dumps(j["predicted"])))
            shapes_ok += bool(j["ok_shape"])
            xs.append(j["features"]["centroid"][0])
        print("motion: %-40s seed %d: centroid x %s; shape right in %d/%d "
              "frames" % (prompt, seed, " ".join("%.1f" % x for x in xs),
                          shapes_ok, len(xs)), flush=True)
        if not all(b > a for a, b in zip(xs, xs[1:])):
            fail("%s, seed %d: the centroid does not move right at every "
                 "frame" % (prompt, seed))
        if xs[-1] - xs[0] < MIN_TRAVEL:
            fail("%s, seed %d: the centroid moved %.1f pixels, under %.0f"
                 % (prompt, seed, xs[-1] - xs[0], MIN_TRAVEL))
        strips += [(64, 64, f) for f in frames]
    if gallery:
        contact_sheet(os.path.join(gallery, "motion.png"), strips,
                      MOTION_FRAMES)
    print("motion: the shapes move right: ok", flush=True)


def show(prompt, seed, j):
    p, f = j["predicted"], j["features"]
    print("%s %-48s seed %-5d fg %-7s bg %-7s shape %-8s fill %.2f "
          "size %-6s place %s" % (
              "ok " if j["ok"] else "BAD", prompt, seed, p.get("fg_name"),
              p.get("bg_name"), p.get("shape"), f.get("fill") or 0.0,
              p.get("size") or "medium", p.get("place")), flush=True)


def contact_sheet(path, images, cols, scale=2):
    """images: list of (w, h, rgb), all 64x64, shown at |scale| times
    their size (nearest) on a 2-pixel grey grid."""
    size, gap = 64 * scale, 2
    rows = (len(images) + cols - 1) // cols
    w, h = cols * (size + gap) + gap, rows * (size + gap) + gap
    sheet = bytearray(b"\x80" * (w * h * 3))
    for i, (iw, ih, rgb) in enumerate(images):
        r, c = divmod(i, cols)
        x0, y0 = gap + c * (size + gap), gap + r * (size + gap)
        for y in range(ih * scale):
            src = rgb[(y // scale) * iw * 3:(y // scale + 1) * iw * 3]
            line = b"".join(src[x * 3:x * 3 + 3] * scale for x in range(iw))
            off = ((y0 + y) * w + x0) * 3
            sheet[off:off + len(line)] = line
    png.write(path, w, h, bytes(sheet))


def main():
    tmp = tempfile.mkdtemp(prefix="gh-demo-e2e-")
    gallery = os.environ.get("GH_DEMO_GALLERY")
    d = start(tmp)
    try:
        models = json.loads(ctl(d, "models", "--json"))
        demo = [m for m in (models.get("models", models)
                            if isinstance(models, dict) else models)
                if m.get("name") == "demo"]
        want = json.loads(os.environ.get("GH_DEMO_PARAMETERS") or
                          '{"width": 64, "height": 64}')
        if not demo or demo[0].get("parameters") != want:
            fail("ListModels does not show demo's parameters: %s"
                 % json.dumps(models))
        print("ListModels shows demo with its parameters: ok", flush=True)
        t0 = time.time()
        passed, placed, sized, judged, images = 0, 0, 0, [], []
        for i, prompt in enumerate(PROMPTS):
            for seed in SEEDS:
                out = os.path.join(tmp, "p%02d-%d.png" % (i, seed))
                w, h, rgb, _ = txt2img(d, out, prompt, seed)
                if (w, h) != (64, 64):
                    fail("%s: %dx%d, 64x64 expected" % (out, w, h))
                j = semantic.judge(prompt, w, h, rgb)
                show(prompt, seed, j)
                passed += bool(j["ok"])
                placed += bool(j["ok_place"])
                sized += bool(j["ok_size"])
                judged.append({"prompt": prompt, "seed": seed,
                               "ok": bool(j["ok"])})
                images.append((w, h, rgb))
        n = len(PROMPTS) * len(SEEDS)
        acc = passed / n
        per = (time.time() - t0) / n
        print("semantic accuracy: %d/%d = %.1f%% (%d prompts x %d seeds, "
              "%d steps; %.2f s per picture through the daemon)"
              % (passed, n, 100 * acc, len(PROMPTS), len(SEEDS), STEPS, per),
              flush=True)
        print("informative, not required: place %d/%d, size %d/%d"
              % (placed, n, sized, n), flush=True)
        if gallery:
            os.makedirs(gallery, exist_ok=True)
            contact_sheet(os.path.join(gallery, "gallery.png"), images,
                          2 * len(SEEDS))
            with open(os.path.join(gallery, "gallery.json"), "w") as f:
                json.dump(judged, f, indent=1)
        if acc < MIN_ACCURACY:
            fail("semantic accuracy %.1f%% is under %.0f%%"
                 % (100 * acc, 100 * MIN_ACCURACY))

        # The same seed, the same pixels.
        again = txt2img(d, os.path.join(tmp, "again.png"), PROMPTS[0],
                        SEEDS[0])
        if again[2] != images[0][2]:
            fail("the same prompt and seed gave different pixels")
        print("same seed, same pixels: ok", flush=True)

        # The job's own size wins over the model's default (64x64).
        out = os.path.join(tmp, "wide.png")
        ctl(d, "generate", "txt2img", "--model", "demo", "--param",
            "prompt=" + PROMPTS[0], "--param", "width=128", "--param",
            "seed=1", "--param", "steps=4", "-o", out)
        w, h, _, _ = png.read(out)
        if (w, h) != (128, 64):
            fail("width=128 gave %dx%d, 128x64 expected" % (w, h))
        print("a job's width over the model's default: ok", flush=True)

        # img2img: the red circle, recoloured green.
        src = os.path.join(tmp, "p00-%d.png" % SEEDS[0])
        out = os.path.join(tmp, "green.png")
        green = "a green circle on a blue background"
        ctl(d, "generate", "img2img", "--model", "demo", "--param",
            "prompt=" + green, "--param", "image=@" + src, "--param",
            "strength=0.75", "--param", "seed=%d" % SEEDS[0], "--param",
            "steps=%d" % STEPS, "-o", out)
        w, h, rgb, _ = png.read(out)
        j = semantic.judge(green, w, h, rgb)
        show(green + " (img2img)", SEEDS[0], j)
        before = semantic.judge(PROMPTS[0], *images[0])
        if not before["ok"]:
            fail("the img2img source is not a red circle on blue")
        if not j["ok"]:
            fail("img2img did not make a green circle on blue: %s"
                 % json.dumps(j, default=str))
        if gallery:
            contact_sheet(os.path.join(gallery, "img2img.png"),
                          [images[0], (w, h, rgb)], 2)
        print("img2img red -> green: ok", flush=True)
        check_motion(d, tmp, gallery)
    finally:
        d.stop()
    # A model default of the wrong type: refused, and said to be the model's.
    tmp2 = tempfile.mkdtemp(prefix="gh-demo-e2e-")
    d = start(tmp2, shipped_demo_section(parameters='{"width": "wide"}'))
    try:
        try:
            d.ctl("generate", "txt2img", "--model", "demo", "--param",
                  "prompt=x", "-o", os.path.join(tmp2, "x.png"))
            fail("a job with a bad model default was not refused")
        except ghdaemon.DaemonError as e:
            if "[model] parameters" not in str(e):
                fail("a bad model default was not refused as the model's: "
                     "%s" % e)
        print("a bad model default is refused as the model's: ok",
              flush=True)
    finally:
        d.stop()
    shutil.rmtree(tmp)
    shutil.rmtree(tmp2)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
