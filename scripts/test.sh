#!/usr/bin/env bash
# Builds cuoptim and runs every test: installs what is missing (scripts/setup.sh), configures,
# builds, runs ctest (Criterion suites; GPU suites skip without a GPU; test_ranks, the
# multi-rank suite, runs the host backend under mpirun -np 1 to 4); then the host-only build
# (CUOPTIM_WITH_CUDA=OFF, in BUILD_DIR-host) with the CUDA toolkit hidden, and its suites; then
# builds the same sources against the emulated CUDA device (emu/, in BUILD_DIR-emu) and runs every
# suite again there, so the kernels and the CUDA backend (its NCCL path over an emulated NCCL
# under mpirun included) are exercised on machines without a GPU; then builds the real build again
# with host code under AddressSanitizer + UBSan (BUILD_DIR-asan) and runs every suite there; then
# runs each fuzz target of tests/fuzz/ briefly on its committed corpus (scripts/fuzz.sh,
# BUILD_DIR-fuzz). Any sanitizer report fails the run. Usage:
#   scripts/test.sh                 build in ./build and run all tests
#   BUILD_DIR=dir scripts/test.sh   another build directory
#   CUOPTIM_SANITIZE=ON scripts/test.sh   host code under AddressSanitizer + UBSan in every build
#   CUOPTIM_SKIP_EMULATED=1 scripts/test.sh   no emulated-device build
#   CUOPTIM_SKIP_HOST_ONLY=1 scripts/test.sh  no host-only build
#   CUOPTIM_FUZZ_SECONDS=n scripts/test.sh    seconds per fuzz target (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/setup.sh
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"

build=${BUILD_DIR:-build}
sanitize=${CUOPTIM_SANITIZE:-OFF}
jobs=$(nproc 2>/dev/null || echo 2)

# Runs ctest in build directory $1. In a sanitizer build every report fails the run: UBSan aborts
# (-fno-sanitize-recover), and every report is written under $1/sanitizer-logs, because Criterion
# runs each test in a child process whose leak report at exit would not fail the test.
# protect_shadow_gap=0: the CUDA driver maps memory where ASan would reserve its shadow gap.
# allocator_may_return_null=1: an allocation too large to serve returns NULL, as malloc does,
# so the tests of cuoptim's ALLOC_FAILED paths run under ASan too.
run_ctest() {
  local logs status=0
  logs="$(cd "$1" && pwd)/sanitizer-logs"
  rm -rf "$logs" && mkdir -p "$logs"
  (cd "$1" &&
    ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:protect_shadow_gap=0:allocator_may_return_null=1:log_path=$logs/asan" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan" \
    ctest --output-on-failure --timeout 1800 -j "$jobs") || status=$?
  # Reports fail the run; warnings (ASan's about the emulated device's stack switches) do not.
  local reports=()
  mapfile -t reports < <(grep -lE 'ERROR: [A-Za-z]+Sanitizer|runtime error:' "$logs"/* 2>/dev/null || true)
  if [ ${#reports[@]} -gt 0 ]; then
    cat "${reports[@]}"
    echo "test: sanitizer reports in $1 (above; files in $logs)" >&2
    status=1
  fi
  return $status
}

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCUOPTIM_SANITIZE="$sanitize"
cmake --build "$build" -j "$jobs"
run_ctest "$build"

if [ "${CUOPTIM_SKIP_HOST_ONLY:-0}" != 1 ]; then
  echo "== the host-only build (CUOPTIM_WITH_CUDA=OFF, in $build-host), the CUDA toolkit hidden =="
  # No CUDA directory on PATH, and a CUDA compiler and toolkit that do not exist: any use of them
  # fails; host_only_build_uses_no_cuda checks the libraries and the headers the build used. NVTX
  # off: a machine without the toolkit has no NVTX headers either.
  host_path=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v -i cuda | paste -sd: -)
  without_cuda=(env PATH="$host_path" CUDACXX=/nonexistent/nvcc CUDAToolkit_ROOT=/nonexistent CUDA_PATH=/nonexistent)
  "${without_cuda[@]}" cmake -S "$root" -B "$build-host" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCUOPTIM_WITH_CUDA=OFF \
    -DCUOPTIM_WITH_NVTX=OFF -DCUOPTIM_SANITIZE="$sanitize"
  "${without_cuda[@]}" cmake --build "$build-host" -j "$jobs"
  PATH="$host_path" run_ctest "$build-host"
fi

if [ "${CUOPTIM_SKIP_EMULATED:-0}" != 1 ]; then
  echo "== the same suites on the emulated CUDA device (emu/: kernels run on the CPU) =="
  cmake -S "$root" -B "$build-emu" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCUOPTIM_EMULATE_DEVICE=ON \
    -DCUOPTIM_SANITIZE="$sanitize"
  cmake --build "$build-emu" -j "$jobs"
  run_ctest "$build-emu"
fi

if [ "$sanitize" != ON ]; then
  echo "== the same suites with host code under AddressSanitizer + UBSan (in $build-asan) =="
  cmake -S "$root" -B "$build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCUOPTIM_SANITIZE=ON
  cmake --build "$build-asan" -j "$jobs"
  run_ctest "$build-asan"
fi

echo "== each fuzz target of tests/fuzz/ for ${CUOPTIM_FUZZ_SECONDS:-20} s on its committed corpus =="
rm -rf "$build-fuzz/check"
FUZZ_BUILD_DIR="$build-fuzz" FUZZ_WORK="$build-fuzz/check" bash scripts/fuzz.sh "${CUOPTIM_FUZZ_SECONDS:-20}"
