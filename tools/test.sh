#!/usr/bin/env bash
# The test suite, from a fresh Debian machine: install dependencies, build
# with AddressSanitizer and UndefinedBehaviorSanitizer, run every test, then
# run the unit tests under Valgrind in a build without sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/deps.sh
jobs=$(nproc)

cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Debug -DGH_SANITIZE=address,undefined >/dev/null
cmake --build build-test -j"$jobs"
ctest --test-dir build-test --output-on-failure -j"$jobs"

# RelWithDebInfo, as tools/run.sh builds: optimised builds warn about more
# (warnings are errors), and Valgrind copes with -O2 -g.
cmake -S . -B build-valgrind -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-valgrind -j"$jobs"
ctest --test-dir build-valgrind -L valgrind --output-on-failure -j"$jobs"
# Memory growth is only meaningful without sanitizers: the model store's
# leak test again, in this build; and the workers as they run in a release
# build (crash, hang and retry handling without the sanitizers' runtime).
ctest --test-dir build-valgrind -R '^test-(models|workers|worker-protocol)$' --output-on-failure
