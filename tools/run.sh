#!/usr/bin/env bash
# The main job, from a fresh Debian machine: install dependencies, build,
# start gpuhostd on a private socket (CPU device, no root needed beyond the
# package install) with the demo model, and generate circle.png ("a red
# circle on a blue background") with it, then circle.mp4 (the same circle
# crossing the picture, through the demo motion module). The daemon keeps
# running; the last lines say how to talk to it and how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

run=${GPUHOST_RUN_DIR:-${XDG_RUNTIME_DIR:-/tmp}/gpuhost-$(id -u)}
mkdir -p "$run"
chmod 0700 "$run"
sock="$run/gpuhost.sock"
cat > "$run/gpuhost.conf" <<CONF
# Written by tools/run.sh: the defaults of etc/gpuhost.conf.in, on a
# private socket, with the worker, the pipeline plugins and the demo model of
# this source tree.
[socket]
path = $sock
[workers]
executable = $PWD/build/daemon/gpuhost-worker
plugin_directory = $PWD/build/plugins/out
[model demo]
path = $PWD/models/demo
parameters = {"width": 64, "height": 64}
[model demo-motion]
path = $PWD/models/demo-motion/demo-motion.safetensors
CONF

# A daemon from an earlier run may hold the socket: replace it.
if [ -f "$run/gpuhostd.pid" ] && kill -0 "$(cat "$run/gpuhostd.pid")" 2>/dev/null; then
        kill -TERM "$(cat "$run/gpuhostd.pid")"
        for _ in $(seq 50); do kill -0 "$(cat "$run/gpuhostd.pid")" 2>/dev/null || break; sleep 0.1; done
fi

setsid build/daemon/gpuhostd -c "$run/gpuhost.conf" </dev/null >"$run/gpuhostd.log" 2>&1 &
echo $! > "$run/gpuhostd.pid"
export GPUHOST_SOCKET="$sock"
for _ in $(seq 100); do
        build/daemon/gpuhostctl ping >/dev/null 2>&1 && break
        kill -0 "$(cat "$run/gpuhostd.pid")" 2>/dev/null || { cat "$run/gpuhostd.log" >&2; exit 1; }
        sleep 0.1
done
build/daemon/gpuhostctl status
build/daemon/gpuhostctl generate txt2img --model demo --param prompt="a red circle on a blue background" -o circle.png
build/daemon/gpuhostctl generate video --model demo --param motion_module=demo-motion \
        --param prompt="a red circle on a blue background" --param frames=8 -o circle.mp4
cat <<MSG

Wrote $PWD/circle.png and $PWD/circle.mp4.
gpuhostd is running (pid $(cat "$run/gpuhostd.pid"), log $run/gpuhostd.log).
Talk to it:  GPUHOST_SOCKET=$sock build/daemon/gpuhostctl generate txt2img --model demo --param prompt="a small yellow star on a purple background, top left" -o star.png
Stop it:     kill \$(cat $run/gpuhostd.pid)
MSG
