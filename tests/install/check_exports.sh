#!/bin/sh
# Fails when the shared library exports a symbol outside the public API (include/cuoptim.h, every
# name cuoptimXxx): internal functions (cuoptim_xxx), kernels and whatever a static library linked
# into it brings must stay hidden. Only the few symbols the linker itself defines are let through.
# Usage: check_exports.sh path/to/libcuoptim.so
set -eu
lib=$1
symbols=$(nm -D --defined-only "$lib" | awk '{print $NF}')
[ -n "$symbols" ] || { echo "check_exports: $lib exports nothing" >&2; exit 1; }
foreign=$(printf '%s\n' "$symbols" | grep -v -E '^cuoptim[A-Z]' |
  grep -v -x -E '_init|_fini|__bss_start|_edata|_end' || true)
if [ -n "$foreign" ]; then
  echo "check_exports: $lib exports symbols outside the public API:" >&2
  printf '%s\n' "$foreign" >&2
  exit 1
fi
echo "check_exports: $(printf '%s\n' "$symbols" | grep -c -E '^cuoptim[A-Z]') cuoptim* symbols, nothing else"
