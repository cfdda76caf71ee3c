#!/usr/bin/env bash
# Runs everything that needs a GPU, in one command, on a machine with one (the device tool's):
# every test suite (GPU suites included), every reference case on the CUDA backend, the
# compute-sanitizer memcheck and racecheck passes on the GPU suites, and the benchmarks.
#   scripts/gpu-check.sh [BUILD_DIR] [OUT_DIR]
# BUILD_DIR is the bundle scripts/gpu-pack.sh makes on a machine with the build dependencies; if it
# is missing and cmake + Criterion + cJSON are installed here, a build is made here instead.
# Exit status: 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${1:-build-gpu-bundle}
out=${2:-${OUT:-$root/gpu-results}}
mkdir -p "$out"
# The bundle's libraries first; then the CUDA toolkit's (cuBLAS and NCCL are not in the bundle:
# too large) and those of Python's nvidia-* wheels, where the machine has its CUDA libraries so.
cuda_libs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import glob, site; print(" ".join(d for p in site.getsitepackages() for d in sorted(glob.glob(p + "/nvidia/*/lib"))))' 2>/dev/null); do
  [ -d "$d" ] && cuda_libs="$cuda_libs:$d"
done
export LD_LIBRARY_PATH="$root/$build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}$cuda_libs"
export CUOPTIM_TEST_DATA="$root/tests/data"
export CUOPTIM_REPLAY="$root/$build/cuoptim-replay"
for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do [ -d "$d" ] && export PATH="$PATH:$d"; done

if [ ! -x "$build/cuoptim-replay" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build "$build" -j "$(nproc)" || exit 1
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

passed=0
failed=0
failures=()
check() { # name, command...
  local name=$1
  shift
  echo "=== $name"
  if "$@" > "$out/$name.log" 2>&1; then
    passed=$((passed + 1))
    tail -n 3 "$out/$name.log"
  else
    failed=$((failed + 1))
    failures+=("$name")
    tail -n 40 "$out/$name.log"
  fi
}

for t in "$build"/test_*; do
  [ -x "$t" ] || continue
  check "$(basename "$t")" "$t" --jobs 4
done

cases_cuda() {
  local bad=0
  for c in tests/data/cases/*.json; do
    "$build/cuoptim-replay" --check --backend cuda --quiet "$c" || { echo "FAIL $c"; bad=1; }
  done
  return $bad
}
check replay_cuda cases_cuda

if command -v compute-sanitizer >/dev/null 2>&1; then
  for t in test_cuda test_cuda_graph; do
    [ -x "$build/$t" ] || continue
    check "memcheck_$t" compute-sanitizer --tool memcheck --error-exitcode 9 "$build/$t" --jobs 1
    # racecheck instruments every shared-memory access; the many-tensor tests (10,000 and 100,000
    # tensors: the same kernels as the others, on 10^5 blocks) are left out to keep the call short
    # (their time under racecheck has not been measured).
    check "racecheck_$t" compute-sanitizer --tool racecheck --error-exitcode 9 "$build/$t" --jobs 1 \
      --filter '!(cuda_many_tensors/*)'
  done
else
  echo "compute-sanitizer not found: sanitizer passes not run"
  failed=$((failed + 1))
  failures+=("compute-sanitizer-missing")
fi

if [ -x "$build/cuoptim-bench" ] && [ "${CUOPTIM_SKIP_BENCH:-0}" != 1 ]; then
  check bench bash scripts/bench.sh "$build" "$out"
fi

echo
echo "gpu-check: $passed passed, $failed failed"
[ $failed -eq 0 ] || { printf 'failed: %s\n' "${failures[@]}"; exit 1; }
