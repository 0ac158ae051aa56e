#!/bin/bash
# End-to-end test of gpuhostctl's device and model commands (devices,
# models, model load/unload/pin/unpin) against a real gpuhostd.
#
# Starts gpuhostd ($GH_GPUHOSTD) with a private socket, a 64M CPU pool in
# 2M slabs and a models directory holding one tiny safetensors file, then
# runs gpuhostctl ($GH_GPUHOSTCTL) and checks exit codes and output. Ends
# with "N passed, M failed" and exits non-zero on any failure. The daemon
# and the temporary directory go away on any exit.
set -u

: "${GH_GPUHOSTD:?set GH_GPUHOSTD to the gpuhostd binary}"
: "${GH_GPUHOSTCTL:?set GH_GPUHOSTCTL to the gpuhostctl binary}"

passed=0
failed=0
daemon_pid=
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gh-ctl-models.XXXXXX") || exit 1

cleanup() {
        if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
                kill -KILL "$daemon_pid" 2>/dev/null
                wait "$daemon_pid" 2>/dev/null
        fi
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() {
        passed=$((passed + 1))
        echo "ok   $1"
}

fail() {
        failed=$((failed + 1))
        echo "FAIL $1"
        shift
        for detail in "$@"; do
                printf '       %s\n' "$detail"
        done
}

# ctl ARGS...: runs gpuhostctl on the test's socket; sets $rc, $out, $err.
ctl() {
        "$GH_GPUHOSTCTL" -s "$tmp/sock" "$@" >"$tmp/out" 2>"$tmp/err"
        rc=$?
        out=$(cat "$tmp/out")
        err=$(cat "$tmp/err")
}

# expect NAME WANT_RC [STREAM PATTERN]...: checks the last ctl's exit code
# and that each stream (out or err) matches its extended regex.
expect() {
        local name=$1 want=$2
        shift 2
        if [ "$rc" -ne "$want" ]; then
                fail "$name" "exit $rc, wanted $want" "stdout: $out" "stderr: $err"
                return
        fi
        while [ $# -ge 2 ]; do
                local text
                if [ "$1" = out ]; then text=$out; else text=$err; fi
                if ! grep -Eq -- "$2" <<<"$text"; then
                        fail "$name" "$1 does not match /$2/" "stdout: $out" "stderr: $err"
                        return
                fi
                shift 2
        done
        pass "$name"
}

# ---- a tiny safetensors file: one F32 tensor of two elements ----

mkdir -p "$tmp/models"
header='{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
while [ $(( ${#header} % 8 )) -ne 0 ]; do
        header="$header "
done
n=${#header}
le=
for shift_bits in 0 8 16 24 32 40 48 56; do
        le="$le$(printf '\\x%02x' $(( (n >> shift_bits) & 255 )))"
done
{
        printf "$le"
        printf '%s' "$header"
        printf '\x00\x00\x80\x3f\x00\x00\x00\x40' # 1.0f, 2.0f
} >"$tmp/models/tiny.safetensors"

cat >"$tmp/gpuhost.conf" <<EOF
[socket]
path = $tmp/sock

[devices]
cpu_memory = 64M
slab_size = 2M

[models]
directory = $tmp/models
EOF

# ---- the daemon ----

"$GH_GPUHOSTD" -c "$tmp/gpuhost.conf" 2>"$tmp/daemon.log" &
daemon_pid=$!
up=0
for _ in $(seq 1 300); do
        if "$GH_GPUHOSTCTL" -s "$tmp/sock" ping >/dev/null 2>&1; then
                up=1
                break
        fi
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
done
if [ "$up" -ne 1 ]; then
        fail "gpuhostd answers ping" "$(cat "$tmp/daemon.log")"
        echo "$passed passed, $failed failed"
        exit 1
fi
pass "gpuhostd answers ping"

# ---- devices ----

ctl devices
expect "devices lists a cpu device" 0 out '^INDEX +KIND +NAME' out '^[0-9]+ +cpu '

ctl devices --json
if [ "$rc" -eq 0 ] && python3 -c 'import json,sys; json.load(sys.stdin)' <<<"$out" 2>/dev/null; then
        pass "devices --json is valid JSON"
else
        fail "devices --json is valid JSON" "exit $rc" "stdout: $out" "stderr: $err"
fi
# The CPU's index, for --device: on a machine with GPUs, they come first.
cpu=$(python3 -c 'import json,sys
print([d["index"] for d in json.load(sys.stdin)["devices"] if d["kind"] == "cpu" and d.get("pool")][0])' \
        <<<"$out" 2>/dev/null)
if [ -z "$cpu" ]; then
        fail "devices --json has a cpu device with a pool" "stdout: $out"
        cpu=0
else
        pass "devices --json has a cpu device with a pool (index $cpu)"
fi

# ---- models, load, pin, unload ----

ctl models
expect "models lists the model" 0 out '^NAME +SOURCE +DTYPE +PINNED +RESIDENT +PATH' \
        out "^tiny +directory +keep +no +- +$tmp/models/tiny.safetensors\$"

ctl model load tiny --device "$cpu"
expect "model load exits 0 and prints loaded" 0 out "^loaded tiny onto device $cpu: 8 B in [0-9.]+ s \\([0-9]+ MB/s\\)\$"
if [ "$(wc -l <"$tmp/out")" -eq 1 ] && [ -z "$err" ]; then
        pass "model load prints one line, no progress when stderr is not a terminal"
else
        fail "model load prints one line, no progress when stderr is not a terminal" "stdout: $out" "stderr: $err"
fi

ctl models
expect "models shows it resident" 0 out "^tiny +directory +keep +no +$cpu: 8 B ready refs=0 "

ctl model load tiny --device "$cpu" --json
if [ "$rc" -eq 0 ] && python3 -c 'import json,sys; r = json.load(sys.stdin); assert r["model"] == "tiny" and r["bytes_total"] == 8' \
        <<<"$out" 2>/dev/null; then
        pass "model load --json prints the final reply as JSON"
else
        fail "model load --json prints the final reply as JSON" "exit $rc" "stdout: $out" "stderr: $err"
fi

ctl model pin tiny
expect "model pin exits 0" 0 out '^pinned tiny'
ctl models
expect "models shows it pinned" 0 out '^tiny +directory +keep +yes '

ctl model unpin tiny
expect "model unpin exits 0" 0 out '^unpinned tiny'
ctl models
expect "models shows it unpinned" 0 out '^tiny +directory +keep +no '

ctl model unload tiny --device "$cpu"
expect "model unload exits 0" 0 out "^unloaded tiny from device $cpu\$"
ctl models
expect "models shows it no longer resident" 0 out '^tiny +directory +keep +no +- '

ctl model unload tiny --device "$cpu"
expect "unloading again exits 1 with ModelNotLoaded" 1 err 'ModelNotLoaded'

# ---- errors ----

ctl model load nosuch
expect "model load nosuch exits 1 with ModelNotFound" 1 err 'ModelNotFound'

ctl model load tiny --device 99
expect "model load --device 99 exits 1 with DeviceNotFound" 1 err 'DeviceNotFound'

ctl model load tiny --device -1
expect "model load --device -1 is a usage error" 2 err "invalid device '-1'"

ctl model frobnicate x
expect "model frobnicate exits 2 naming the actions" 2 err "unknown action 'frobnicate'" err 'load, unload, pin, unpin'

ctl model pin tiny --device 0
expect "model pin --device is a usage error" 2 err 'does not apply'

ctl help model
expect "help model lists the actions" 0 out '^  load NAME' out '^  unload NAME' out '^  pin NAME' out '^  unpin NAME'

# ---- stop ----

kill -TERM "$daemon_pid"
wait "$daemon_pid"
status=$?
daemon_pid=
if [ "$status" -eq 0 ]; then
        pass "gpuhostd exits 0 on SIGTERM"
else
        fail "gpuhostd exits 0 on SIGTERM" "exit $status" "$(tail -n 20 "$tmp/daemon.log")"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
