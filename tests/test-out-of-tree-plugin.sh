#!/bin/bash
# Builds a plugin out of tree against an installed gpuhost, two ways: a
# separate CMake project with find_package(Gpuhost) + gh_add_plugin(), and a
# plain compiler line with pkg-config; both must load in the worker's loader.
# Usage: test-out-of-tree-plugin.sh SOURCE_DIR BUILD_DIR PLUGIN_CHECK
set -euo pipefail
src=$1 build=$2 check=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { echo "PASS: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }

prefix=$tmp/root/usr
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; exit 1; }
[ -f "$prefix/lib/cmake/Gpuhost/GpuhostConfig.cmake" ] || [ -n "$(ls "$prefix"/lib*/cmake/Gpuhost/GpuhostConfig.cmake 2>/dev/null)" ] \
        && ok "the CMake package is installed" || bad "no GpuhostConfig.cmake under $prefix"

if cmake -S "$src/tests/out-of-tree-plugin" -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" >"$tmp/cfg.log" 2>&1 &&
   cmake --build "$tmp/cmake-build" >"$tmp/build.log" 2>&1; then
        ok "a separate CMake project builds a plugin with gh_add_plugin()"
else
        cat "$tmp/cfg.log" "$tmp/build.log" 2>/dev/null; bad "the CMake project failed"
fi
if out=$("$check" "$tmp/cmake-build/hello.so" 2>&1) && [ "$out" = "hello 1.0" ]; then
        ok "it loads: $out"
else
        bad "loading the CMake-built plugin: $out"
fi
exported=$(nm -D --defined-only "$tmp/cmake-build/hello.so" | awk '$2 == "T" {print $3}')
[ "$exported" = "gh_plugin_entry" ] && ok "it exports gh_plugin_entry only" || bad "exports: $exported"

pcdir=$(dirname "$(ls "$prefix"/lib*/pkgconfig/gpuhost-plugin.pc "$prefix"/lib/*/pkgconfig/gpuhost-plugin.pc 2>/dev/null | head -1)")
if flags=$(PKG_CONFIG_PATH=$pcdir PKG_CONFIG_SYSROOT_DIR= pkg-config --define-variable=prefix="$prefix" --cflags gpuhost-plugin) &&
   cc $flags -shared -o "$tmp/hello-pc.so" "$src/tests/out-of-tree-plugin/hello.c" 2>"$tmp/cc.log"; then
        ok "pkg-config gpuhost-plugin builds it with a plain compiler line"
        out=$("$check" "$tmp/hello-pc.so" 2>&1) && [ "$out" = "hello 1.0" ] && ok "that one loads too" || bad "loading: $out"
else
        cat "$tmp/cc.log" 2>/dev/null; bad "the pkg-config build failed"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
