#!/usr/bin/env bash
# Builds, on this machine, everything the GPU machine needs (it has no Criterion or cJSON and no
# network): a Release build for Hopper in build-gpu/, then a small bundle in build-gpu-bundle/ with
# the stripped binaries and, in lib/, the shared libraries they need that a bare CUDA machine lacks
# (glibc's own libraries excluded: the GPU machine's newer glibc serves them). Then the GPU machine
# runs
#   scripts/gpu-check.sh build-gpu-bundle
# with the bundle carried along (device tool: carry ["build-gpu-bundle"]; the carry limit is
# 64 MiB together with the working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
build=${1:-build-gpu}
bundle=${2:-build-gpu-bundle}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90
cmake --build "$build" -j "$(nproc)"
rm -rf "$bundle"
mkdir -p "$bundle/lib"
binaries=()
for bin in "$build"/test_* "$build"/cuoptim-replay "$build"/cuoptim-bench; do
  [ -f "$bin" ] && [ -x "$bin" ] && binaries+=("$bin")
done
cp "${binaries[@]}" "$bundle/"
strip --strip-debug "$bundle"/test_* "$bundle"/cuoptim-* 2>/dev/null || true
# Libraries outside glibc and the CUDA driver/runtime, which the GPU image already has (NCCL and
# cuBLAS too: they come with the CUDA install, and at 200 MB and more would not fit the bundle;
# gpu-check.sh looks for them in the toolkit's and Python's nvidia-* directories).
for bin in "${binaries[@]}"; do
  ldd "$bin" | awk '/=> \// {print $3}'
done | sort -u |
  grep -vE '/(libc|libm|libdl|libpthread|librt|libresolv|libutil|libnss_[a-z]*|libgcc_s|libstdc\+\+|ld-linux[^/]*|libcuda|libcudart|libnccl|libcublas|libcublasLt)\.so' |
  while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
ls "$bundle" "$bundle/lib"
du -sh "$bundle"
