#!/bin/sh
# A host-only build (CUOPTIM_WITH_CUDA=OFF) uses nothing of CUDA: the shared library needs no CUDA
# library, neither library holds or calls a CUDA runtime symbol (cudaXxx, __cudaXxx) or a kernel
# image, and no object of the build included a CUDA header (read from the compiler's dependency
# files, which the Makefile generator keeps; NVTX's headers are no part of CUDA).
# Usage: check_no_cuda.sh path/to/libcuoptim.so path/to/libcuoptim.a BUILD_DIR
set -eu
shared=$1 static=$2 build=$3
status=0

needed=$(readelf -d "$shared" | grep NEEDED | grep -i -E 'libcuda|libnvidia|libnccl' || true)
if [ -n "$needed" ]; then
  echo "check_no_cuda: $shared needs a CUDA library:" >&2
  echo "$needed" >&2
  status=1
fi

symbols=$( (nm "$shared"; nm "$static") 2>/dev/null | awk '{print $NF}' |
  grep -E '^_*cuda[A-Z_]|^__nv_|fatbin' | sort -u || true)
if [ -n "$symbols" ]; then
  echo "check_no_cuda: CUDA symbols in the libraries:" >&2
  echo "$symbols" >&2
  status=1
fi

depfiles=$(find "$build" -name '*.o.d' | wc -l)
if [ "$depfiles" -gt 0 ]; then
  cuda_header='cuda_runtime|/cuda\.h$|driver_types\.h|host_defines\.h|cuda_fp16|cuda_bf16'
  cuda_header="$cuda_header|/cuda[-0-9.]*/(targets/[^/]*/)?include/"
  headers=$(find "$build" -name '*.o.d' -exec cat {} + | tr ' \\' '\n\n' | grep -v nvtx3 |
    grep -E "$cuda_header" | sort -u || true)
  if [ -n "$headers" ]; then
    echo "check_no_cuda: CUDA headers included by the build:" >&2
    echo "$headers" >&2
    status=1
  fi
else
  echo "check_no_cuda: no compiler dependency files in $build (a generator other than Makefiles): headers not checked"
fi
[ "$status" -eq 0 ] && echo "check_no_cuda: no CUDA library, symbol or header ($depfiles dependency files read)"
exit "$status"
