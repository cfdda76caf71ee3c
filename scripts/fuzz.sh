#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ (clang, ASan + UBSan, emulated device: no nvcc) and
# runs each for a while, starting from its committed corpus tests/fuzz/corpus/<target>/, which is
# only read: the inputs a run adds go to a scratch directory. Prints the executions per target and
# exits non-zero when a target found a crash, a leak, a sanitizer report, a broken property or a
# slow input (the input is kept under the scratch directory; tests/fuzz/README.md says what next).
#   scripts/fuzz.sh [SECONDS [TARGET...]]   SECONDS per target (default 600), TARGETs
#                                           fuzz_keras_json fuzz_case_load fuzz_api (default all)
# Environment:
#   FUZZ_BUILD_DIR   build directory (default build-fuzz)
#   FUZZ_WORK        scratch directory (default $FUZZ_BUILD_DIR/work: corpus/<target>, artifacts/)
#   FUZZ_MERGE=1     afterwards, merge the inputs that add coverage into the committed corpus
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"

seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(fuzz_keras_json fuzz_case_load fuzz_api)
build=${FUZZ_BUILD_DIR:-build-fuzz}
work=${FUZZ_WORK:-$build/work}

# A sanitizer report ends the run as a failure; leaks are checked after every input.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

mkdir -p "$work"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCUOPTIM_EMULATE_DEVICE=ON \
  -DCUOPTIM_FUZZ=ON -DCUOPTIM_BUILD_TESTS=OFF > "$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" --target "${targets[@]}" || exit 1

failed=()
for target in "${targets[@]}"; do
  name=${target#fuzz_}
  corpus="$root/tests/fuzz/corpus/$name"
  scratch="$work/corpus/$name"
  artifacts="$work/artifacts"
  mkdir -p "$scratch" "$artifacts"
  log="$work/$target.log"
  echo "== $target: ${seconds}s from $corpus (new inputs: $scratch)"
  # The scratch directory comes first: libFuzzer writes new inputs into its first corpus only.
  "$build/tests/fuzz/$target" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$target-" "$scratch" "$corpus" > "$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cover=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
  echo "   ${runs:-?} executions (${rate:-?}/s), ${cover:-cov: ?}"
  if [ $rc -ne 0 ]; then
    failed+=("$target")
    grep -E -A 30 'ERROR: |property failed|runtime error|Test unit written' "$log" | head -n 60
    echo "   FAILED (exit $rc); full log: $log; reproduce: $build/tests/fuzz/$target <the file above>"
  fi
  if [ "${FUZZ_MERGE:-0}" = 1 ] && [ $rc -eq 0 ]; then
    "$build/tests/fuzz/$target" -merge=1 "$corpus" "$scratch" > "$work/$target.merge.log" 2>&1 &&
      echo "   merged into $corpus: $(ls "$corpus" | wc -l) files"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no finding"
