#!/usr/bin/env bash
# The host backend's benchmark in one command (bench/README.md, "The host backend"):
#   scripts/host-bench.sh [--quick] [BUILD_DIR] [OUT_DIR]
#   1. BUILD_DIR/cuoptim-host-bench --json OUT_DIR/host.json        (memcpy reference + every optimizer)
#   2. python3 bench/numpy_peer.py --json OUT_DIR/numpy.json         (the same Adam in numpy, same sizes)
#   3. python3 bench/numpy_peer.py --compare OUT_DIR/host.json OUT_DIR/numpy.json
#      -> bench/results/host-<date>-<cpu>.md (targets, ratios, every row, lscpu), copied to OUT_DIR
# BUILD_DIR defaults to build (built here when cuoptim-host-bench is missing), OUT_DIR to
# BUILD_DIR/host-bench-out. Python: .venv-tools (scripts/setup.sh makes it, with numpy), else
# python3. HOST_BENCH_ARGS adds options to step 1 (e.g. "--steps 40"); NOTES names a text file
# copied into the results under Notes. Exit status: 0 when every step succeeded, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
quick=()
positional=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    -h | --help)
      sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      echo "host-bench: unknown option $arg" >&2
      exit 2
      ;;
    *) positional+=("$arg") ;;
  esac
done
build=${positional[0]:-build}
out=${positional[1]:-$build/host-bench-out}
case "$build" in /*) ;; *) build="$root/$build" ;; esac
case "$out" in /*) ;; *) out="$root/$out" ;; esac
mkdir -p "$out"
bench="$build/cuoptim-host-bench"
if [ ! -x "$bench" ]; then
  echo "host-bench: building $bench"
  [ -f "$build/CMakeCache.txt" ] || cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo || exit 1
  cmake --build "$build" -j "$(nproc)" --target cuoptim-host-bench || exit 1
fi
python=python3
[ -x "$root/.venv-tools/bin/python3" ] && python="$root/.venv-tools/bin/python3"

status=0
# shellcheck disable=SC2086
"$bench" "${quick[@]}" ${HOST_BENCH_ARGS:-} --json "$out/host.json" | tee "$out/host.txt" || status=1
"$python" bench/numpy_peer.py "${quick[@]}" --json "$out/numpy.json" | tee "$out/numpy.txt" || status=1
notes=()
[ -n "${NOTES:-}" ] && notes=(--notes "$NOTES")
command="scripts/host-bench.sh $*"
"$python" bench/numpy_peer.py --compare "$out/host.json" "$out/numpy.json" --command "$command" "${notes[@]}" \
  | tee "$out/compare.txt" || status=1
written=$(sed -n 's/^written: //p' "$out/compare.txt")
[ -n "$written" ] && cp "$written" "$out/"
exit $status
