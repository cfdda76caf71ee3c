#!/usr/bin/env bash
# Builds cuoptim and runs every test: installs what is missing (scripts/setup.sh), configures,
# builds, runs ctest (Criterion suites; GPU suites skip without a GPU); then builds the same
# sources against the emulated CUDA device (emu/, in BUILD_DIR-emu) and runs every suite again
# there, so the kernels and the CUDA backend are exercised on machines without a GPU. Usage:
#   scripts/test.sh                 build in ./build and run all tests
#   BUILD_DIR=dir scripts/test.sh   another build directory
#   CUOPTIM_SANITIZE=ON scripts/test.sh   host code under AddressSanitizer + UBSan
#   CUOPTIM_SKIP_EMULATED=1 scripts/test.sh   the real build only
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/setup.sh
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"

build=${BUILD_DIR:-build}
sanitize=${CUOPTIM_SANITIZE:-OFF}
jobs=$(nproc 2>/dev/null || echo 2)

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCUOPTIM_SANITIZE="$sanitize"
cmake --build "$build" -j "$jobs"
(cd "$build" && ctest --output-on-failure --timeout 1800 -j "$jobs")

if [ "${CUOPTIM_SKIP_EMULATED:-0}" != 1 ]; then
  echo "== the same suites on the emulated CUDA device (emu/: kernels run on the CPU) =="
  cmake -S "$root" -B "$build-emu" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCUOPTIM_EMULATE_DEVICE=ON \
    -DCUOPTIM_SANITIZE="$sanitize"
  cmake --build "$build-emu" -j "$jobs"
  (cd "$build-emu" && ctest --output-on-failure --timeout 1800 -j "$jobs")
fi
