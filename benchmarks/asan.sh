#!/usr/bin/env bash
# The kernel's tests, count_lines' and count_stats', and the counting tests that run on both
# cores, against builds of the kernel with AddressSanitizer and UBSan: the build as installed (SSE2 on x86), with the block over 4 GiB, then the plain C
# fallbacks (-DKERNEL_PORTABLE):
#
#     bash benchmarks/asan.sh [extra pytest arguments]
#
# Each build goes into a temporary directory, beside a copy of the export_client package that
# comes first on PYTHONPATH, so the source tree and .venv are left as they are. The ASan runtime
# is preloaded into the ordinary interpreter, PYTHONMALLOC=malloc gives every Python object (the
# blocks too) its own malloc block with redzones, and leak detection is off: CPython itself does
# not free everything at exit (test_kernel.py and test_kernel_stats.py check the kernel's own
# allocations with tracemalloc instead). Any report fails the script loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
CC=${CC:-gcc}

uv sync --locked --quiet
python=$(uv run --no-sync python -c 'import sys; print(sys.executable)')
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')

runtime=$("$CC" -print-file-name=libasan.so)
ubsan=$("$CC" -print-file-name=libubsan.so)
if [[ ! -e $runtime || ! -e $ubsan ]]; then
  echo "asan.sh: no sanitizer runtimes found for $CC ($runtime, $ubsan)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sanitizers="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"

# run_tests NAME CFLAGS [pytest arguments]: build the kernel with CFLAGS into $work/NAME, beside
# a copy of the package, and run its tests against that build.
run_tests() {
  local name=$1 cflags=$2
  shift 2
  local dir="$work/$name"
  mkdir -p "$dir"
  cp -R src/export_client "$dir/"
  rm -f "$dir"/export_client/_kernel*.so
  # shellcheck disable=SC2086  # the flags are meant to be split
  "$CC" -std=c11 -O2 -Wall -Wextra -Werror $sanitizers $cflags -fPIC -shared -I"$include" \
    src/export_client/_kernel.c -o "$dir/export_client/_kernel$suffix"
  echo "== $name: built $dir/export_client/_kernel$suffix with $sanitizers $cflags"

  local loaded status=0
  loaded=$(
    LD_PRELOAD="$runtime $ubsan" PYTHONPATH="$dir" ASAN_OPTIONS=detect_leaks=0 \
      "$python" -c 'import export_client._kernel as k; print(k.__file__)'
  )
  if [[ $loaded != "$dir"/* ]]; then
    echo "asan.sh: the tests would import $loaded, not the sanitized build" >&2
    exit 1
  fi
  LD_PRELOAD="$runtime $ubsan" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$dir/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$dir/ubsan" \
    PYTHONMALLOC=malloc PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" -m pytest -p no:cacheprovider -q tests/client/test_kernel.py \
    tests/client/test_kernel_stats.py tests/client/test_counting.py tests/client/test_lines.py \
    tests/client/test_stats.py -k "not agree_with_the_reference" "$@" || status=$?

  shopt -s nullglob
  local reports=("$dir"/asan.* "$dir"/ubsan.*)
  shopt -u nullglob
  if ((${#reports[@]})); then
    echo "asan.sh: THE SANITIZERS REPORTED ERRORS ($name build):" >&2
    cat "${reports[@]}" >&2
    exit 1
  fi
  if ((status)); then
    echo "asan.sh: the tests failed (exit $status) under the sanitizers ($name build)" >&2
    exit "$status"
  fi
  echo "== $name: clean: no AddressSanitizer or UBSan report, tests passed"
}

# The build as installed (SSE2 on x86), with the block over 4 GiB; then the plain C fallbacks.
EXPORT_COUNTER_HUGE_TESTS=1 run_tests native "" "$@"
run_tests portable "-DKERNEL_PORTABLE" "$@"
echo "asan.sh: clean"
