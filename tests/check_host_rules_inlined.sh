#!/bin/sh
# Fails when the host backend's object file defines a function of cuda/rules.h out of line: its
# loops are vectorized only when the rules are inlined into them (CUOPTIM_HD always inlines), and
# a rule called per element makes the host backend several times slower with the same results, so
# no other test would notice.
# Usage: check_host_rules_inlined.sh "OBJECT;OBJECT;..." (the library's objects, a CMake list)
set -eu
object=$(printf '%s\n' "$1" | tr ';' '\n' | grep -E '/backend_host\.c\.o(bj)?$' | head -n 1)
[ -n "$object" ] || { echo "check_host_rules_inlined: no backend_host object in $1" >&2; exit 1; }
out_of_line=$(nm --defined-only "$object" | awk '$2 ~ /^[tT]$/ {print $3}' | grep -E '^cuoptim_' || true)
if [ -n "$out_of_line" ]; then
  echo "check_host_rules_inlined: $object defines rules.h functions out of line:" >&2
  printf '%s\n' "$out_of_line" >&2
  exit 1
fi
echo "check_host_rules_inlined: every cuoptim_* rule is inlined in $object"
