#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test cuoptim (needs root or sudo).
# The CUDA toolkit (nvcc, cudart, NVTX 3, NCCL headers) must already be installed: it is not an
# apt package here. Idempotent: installs nothing when everything is present.
set -euo pipefail

# g++: the emulated-device build (emu/) compiles the kernels as host C++.
# clang + libclang-rt-dev (libFuzzer and the sanitizer runtimes): the fuzz targets (tests/fuzz/).
# libopenmpi-dev + openmpi-bin: the host backend's data-parallel path and its multi-rank tests.
# python3-venv: .venv-tools below.
packages=(cmake make gcc g++ pkg-config libcriterion-dev libcjson-dev libpcre2-dev python3 python3-venv clang
          libclang-rt-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# .venv-tools: Python with safetensors and numpy, for test_checkpoint (it opens a checkpoint as
# Python users do). Nothing is installed when they already import.
tools_venv="$(cd "$(dirname "$0")/.." && pwd)/.venv-tools"
if ! "$tools_venv/bin/python3" -c 'import safetensors, numpy' >/dev/null 2>&1; then
  echo "setup: making $tools_venv (safetensors, numpy)"
  python3 -m venv "$tools_venv"
  "$tools_venv/bin/python3" -m pip install --quiet --disable-pip-version-check safetensors numpy
fi

if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    [ -x "$d/nvcc" ] && { echo "setup: nvcc found in $d (add it to PATH)"; exit 0; }
  done
  echo "setup: nvcc not found: install the CUDA toolkit (12.x or 13.x)" >&2
  exit 1
fi
