#!/usr/bin/env bash
# Installs a cuoptim build into a fresh prefix, then builds the program of this directory
# (adam_step.c) against the installed copy four ways and runs each: the CMake package with
# cuoptim::cuoptim and with cuoptim::cuoptim_static, pkg-config with cuoptim and with
# cuoptim-static. Checks that each program is linked the way it asked for, that only the public
# header is installed, and (CUOPTIM_WITH_CUDA=OFF) that nothing installed names CUDA.
# Usage: run.sh BUILD_DIR WORK_DIR
# Environment: CMAKE, CC, PKG_CONFIG (default cmake, cc, pkg-config), CUOPTIM_WITH_CUDA (ON/OFF).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
work=$2
cmake=${CMAKE:-cmake}
cc=${CC:-cc}
pkg_config=${PKG_CONFIG:-pkg-config}
with_cuda=${CUOPTIM_WITH_CUDA:-ON}

fail() {
  echo "install test: $*" >&2
  exit 1
}

# Runs a command with its output in $work/$1.log, shown when it fails.
logged() {
  local log="$work/$1.log"
  shift
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    fail "failed: $*"
  fi
}

rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"
logged install "$cmake" --install "$build" --prefix "$prefix"

# What the prefix holds: the public header alone, both libraries, the package, the .pc files.
headers=$(cd "$prefix" && find . -name '*.h' | sort)
[ "$headers" = "./include/cuoptim.h" ] || fail "installed headers: $headers (expected ./include/cuoptim.h alone)"
pcdir=$(dirname "$(find "$prefix" -name cuoptim.pc | head -n 1)")
libdir=$(dirname "$pcdir")
for f in "$libdir/libcuoptim.so" "$libdir/libcuoptim.a" "$libdir/cmake/cuoptim/cuoptimConfig.cmake" \
         "$libdir/cmake/cuoptim/cuoptimConfigVersion.cmake" "$pcdir/cuoptim-static.pc"; do
  [ -e "$f" ] || fail "not installed: ${f#"$prefix"/}"
done
if [ "$with_cuda" = OFF ]; then
  if grep -n -E 'CUDA::|CUDAToolkit|cudart' "$libdir"/cmake/cuoptim/*.cmake "$pcdir"/cuoptim*.pc >&2; then
    fail "a host-only build's package names CUDA (above)"
  fi
fi

# Checks how program $1 was linked ($2: shared or static), then runs it.
check_and_run() {
  local program=$1 kind=$2
  if readelf -d "$program" | grep -q 'NEEDED.*libcuoptim\.so'; then
    [ "$kind" = shared ] || fail "$program: linked against libcuoptim.so, asked for the static library"
  else
    [ "$kind" = static ] || fail "$program: not linked against libcuoptim.so"
  fi
  local out
  out=$("$program") || fail "$program failed"
  echo "$program ($kind): $out"
}

for kind in shared static; do
  dir="$work/cmake-$kind"
  logged "cmake-$kind-configure" "$cmake" -S "$here" -B "$dir" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_COMPILER="$cc" -DCUOPTIM_LINK="$kind"
  logged "cmake-$kind-build" "$cmake" --build "$dir"
  check_and_run "$dir/adam_step" "$kind"
done

# pkg-config: only the prefix's .pc files and the system's (cJSON, PCRE2). -lm: the program's own
# sqrt.
export PKG_CONFIG_PATH="$pcdir"
defines=()
[ "$with_cuda" = ON ] && defines=(-DEXPECT_CUDA_BACKEND=1)
flags=(-std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Werror "${defines[@]}")
# shellcheck disable=SC2046  # pkg-config's output is a list of flags
logged pkg-config-shared "$cc" "${flags[@]}" -o "$work/pc-shared" "$here/adam_step.c" \
  $("$pkg_config" --cflags --libs cuoptim) -lm -Wl,-rpath,"$libdir"
check_and_run "$work/pc-shared" shared
# shellcheck disable=SC2046
logged pkg-config-static "$cc" "${flags[@]}" -o "$work/pc-static" "$here/adam_step.c" \
  $("$pkg_config" --cflags --libs cuoptim-static) -lm
check_and_run "$work/pc-static" static
# cuoptim.pc with --static lists what cuoptim-static.pc links, the archive aside.
static_libs=$("$pkg_config" --static --libs cuoptim)
for lib in $("$pkg_config" --libs cuoptim-static); do
  case "$lib" in
    */libcuoptim.a) ;;
    *) [[ " $static_libs " == *" $lib "* ]] || fail "pkg-config --static --libs cuoptim lacks $lib ($static_libs)" ;;
  esac
done
echo "install test: passed (prefix $prefix)"
