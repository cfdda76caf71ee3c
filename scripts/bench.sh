#!/usr/bin/env bash
# Runs the benchmarks on a machine with a GPU, in one command (bench/README.md):
#   scripts/bench.sh [--quick] [--with-bf16] [BUILD_DIR] [OUT_DIR]
#   1. BUILD_DIR/cuoptim-bench --optimizer all --mix all --json OUT_DIR/cuoptim.json
#   2. python3 bench/torch_peer.py --json OUT_DIR/torch.json   (its own process: cuoptim's memory is freed)
#   3. python3 bench/torch_peer.py --compare OUT_DIR/cuoptim.json OUT_DIR/torch.json
#      -> bench/results/<date>-<gpu>.md, copied into OUT_DIR
# --quick: tiny sizes everywhere (a smoke test on any GPU; the .md file gets a -quick suffix).
# --with-bf16: also cuoptim-bench --dtype bf16 -> OUT_DIR/cuoptim-bf16.json and a -bf16 .md file.
# BUILD_DIR (default: build) must hold cuoptim-bench (scripts/gpu-pack.sh builds it); when it does
# not and cmake is installed, it is built here. OUT_DIR defaults to $OUT, else BUILD_DIR/bench-out.
# Each stage's output is also saved in OUT_DIR (*.txt). A failed stage does not stop the later ones.
# Exit status: 0 every stage succeeded; 2 no usable GPU; 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)

quick=()
bf16=0
positional=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    --with-bf16) bf16=1 ;;
    -h | --help)
      sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      echo "bench: unknown option $arg" >&2
      exit 2
      ;;
    *) positional+=("$arg") ;;
  esac
done
build=${positional[0]:-build}
out=${positional[1]:-${OUT:-$build/bench-out}}
case "$build" in /*) ;; *) build="$root/$build" ;; esac
case "$out" in /*) ;; *) out="$root/$out" ;; esac
mkdir -p "$out"
# Shared libraries scripts/gpu-pack.sh copies next to the binaries (cJSON on a bare CUDA machine).
[ -d "$build/lib" ] && export LD_LIBRARY_PATH="$build/lib:${LD_LIBRARY_PATH:-}"
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"

bench="$build/cuoptim-bench"
if [ ! -x "$bench" ]; then
  if command -v cmake > /dev/null 2>&1; then
    echo "bench: building $bench"
    if [ ! -f "$build/CMakeCache.txt" ]; then
      cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCUOPTIM_BUILD_TESTS=OFF || exit 1
    fi
    cmake --build "$build" -j "$(nproc 2> /dev/null || echo 2)" --target cuoptim-bench || exit 1
  else
    echo "bench: $bench is missing and cmake is not installed here (build it with scripts/gpu-pack.sh)" >&2
    exit 1
  fi
fi

status=0
started=$(date +%s)
stage() { # name, log file, command...
  local name=$1 log=$2
  shift 2
  local t0
  t0=$(date +%s)
  echo "=== $name"
  "$@" 2>&1 | tee "$out/$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit status $rc, $(($(date +%s) - t0)) s"
  return "$rc"
}

stage cuoptim-bench cuoptim-bench.txt "$bench" --optimizer all --mix all ${quick[@]+"${quick[@]}"} \
  --json "$out/cuoptim.json"
rc=$?
if [ "$rc" -eq 2 ]; then
  echo "bench: no usable GPU (or bad usage): nothing measured" >&2
  exit 2
fi
[ "$rc" -ne 0 ] && status=1

if [ "$bf16" -eq 1 ]; then
  stage cuoptim-bench-bf16 cuoptim-bench-bf16.txt "$bench" --optimizer all --mix all --dtype bf16 \
    ${quick[@]+"${quick[@]}"} --json "$out/cuoptim-bf16.json" || status=1
fi

stage torch-peer torch-peer.txt python3 bench/torch_peer.py --mix all ${quick[@]+"${quick[@]}"} \
  --json "$out/torch.json" || status=1

stage compare compare.txt python3 bench/torch_peer.py --compare "$out/cuoptim.json" "$out/torch.json" \
  --copy-to "$out" || status=1
if [ "$bf16" -eq 1 ] && [ -f "$out/cuoptim-bf16.json" ]; then
  stage compare-bf16 compare-bf16.txt python3 bench/torch_peer.py --compare "$out/cuoptim-bf16.json" \
    "$out/torch.json" --copy-to "$out" || status=1
fi

echo "bench: done in $(($(date +%s) - started)) s, exit status $status; results in $out"
exit $status
