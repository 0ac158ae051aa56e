#!/usr/bin/env bash
# Installs the Debian packages gpuhost needs to build, run and test.
# Skips apt entirely when everything is already there.
set -euo pipefail

pkgs=(cmake gcc make pkg-config libinih-dev libjson-c-dev libsystemd-dev libcmocka-dev libpng-dev
      libmicrohttpd-dev libpcre2-dev libssl-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
      python3 systemd valgrind)
missing=()
for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
        sudo=sudo
fi
echo "deps: installing ${missing[*]}"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
