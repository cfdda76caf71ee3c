#!/usr/bin/env bash
# Static reading of the kernels' machine code: compiles cuda/kernels.cu for one GPU architecture
# with the build's own flags (-O2 -fmad=false -lineinfo), then prints per kernel the registers and
# spill bytes (ptxas -v, cuobjdump -res-usage) and, for every vector loop, the instructions one
# iteration executes when no division or square root takes its slow path (scripts/sass_report.py
# says how they are counted). No GPU is needed, and none ran anything: these are the compiler's
# figures, not measurements.
#   scripts/sass-report.sh                 sm_90, the update, inspect and Lamb kernels
#   ARCH=80 scripts/sass-report.sh         another architecture
#   scripts/sass-report.sh REGEX           the kernels whose mangled names match REGEX
#   KERNELS_CU=dir/cuda/kernels.cu ...     another copy of the sources (its include/ host/ cuda/)
# cuobjdump and nvdisasm come from the CUDA toolkit when it has them, else from PyPI
# (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm), installed into .venv-tools.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
arch=${ARCH:-90}
source_file=${KERNELS_CU:-$root/cuda/kernels.cu}
tree="$(cd "$(dirname "$source_file")/.." && pwd)"
pattern=${1:-update|lamb_pass|inspect_grad}
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
command -v nvcc >/dev/null || { echo "sass-report: nvcc not found (the CUDA toolkit)" >&2; exit 1; }

find_tool() {
  local name=$1 found
  found=$(command -v "$name" 2>/dev/null || true)
  [ -z "$found" ] && found=$(ls "$root"/.venv-tools/lib/python3*/site-packages/nvidia/cu*/bin/"$name" 2>/dev/null | head -1 || true)
  echo "$found"
}
cuobjdump=$(find_tool cuobjdump)
nvdisasm=$(find_tool nvdisasm)
if [ -z "$cuobjdump" ] || [ -z "$nvdisasm" ]; then
  echo "sass-report: installing cuobjdump and nvdisasm from PyPI into .venv-tools" >&2
  [ -x "$root/.venv-tools/bin/python3" ] || python3 -m venv "$root/.venv-tools"
  "$root/.venv-tools/bin/python3" -m pip install --quiet --disable-pip-version-check nvidia-cuda-cuobjdump \
    nvidia-cuda-nvdisasm >&2
  cuobjdump=$(find_tool cuobjdump)
  nvdisasm=$(find_tool nvdisasm)
fi
[ -n "$cuobjdump" ] && [ -n "$nvdisasm" ] || { echo "sass-report: no cuobjdump or nvdisasm" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s.%N)
nvcc -cubin -arch="sm_$arch" -O2 -fmad=false -lineinfo -I"$tree/include" -I"$tree/host" -I"$tree/cuda" -Xptxas -v \
  "$source_file" -o "$work/kernels.cubin" 2>"$work/ptxas.txt" || { cat "$work/ptxas.txt" >&2; exit 1; }
seconds=$(echo "$(date +%s.%N) - $start" | bc)
"$cuobjdump" -res-usage "$work/kernels.cubin" >"$work/res.txt"
"$nvdisasm" -c "$work/kernels.cubin" >"$work/sass.txt"
echo "sass-report: $(nvcc --version | tail -1), sm_$arch, -O2 -fmad=false; $("$cuobjdump" --version | tail -1)"
echo "sass-report: kernels.cu to one sm_$arch cubin in ${seconds%.*} s; static analysis (no GPU ran it)"
python3 "$root/scripts/sass_report.py" "$work/sass.txt" "$work/res.txt" "$work/ptxas.txt" "$pattern"
