#!/usr/bin/env bash
# Builds, on this machine, everything the GPU machine needs (it has no Criterion or cJSON and no
# network): a Release build for Hopper in build-gpu/, plus the shared libraries the binaries need
# that a bare CUDA machine lacks, in build-gpu/lib. Then the GPU machine runs
#   scripts/gpu-check.sh build-gpu
# with build-gpu carried along (device tool: carry ["build-gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
build=${1:-build-gpu}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90
cmake --build "$build" -j "$(nproc)"
mkdir -p "$build/lib"
# Libraries outside libc and the CUDA driver/runtime that the GPU image already has.
for bin in "$build"/test_* "$build"/cuoptim-replay "$build"/cuoptim-bench; do
  [ -x "$bin" ] || continue
  ldd "$bin" | awk '/=> \// {print $3}'
done | sort -u | grep -vE '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*|libcuda|libcudart)\.so' |
  while read -r lib; do cp -L "$lib" "$build/lib/"; done
ls "$build/lib"
du -sh "$build"
