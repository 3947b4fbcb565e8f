#!/usr/bin/env bash
# The kernel's tests against a build of it with AddressSanitizer (and UBSan), the block over
# 4 GiB included:
#
#     bash benchmarks/asan.sh [extra pytest arguments]
#
# The kernel is compiled once into a temporary directory, beside a copy of the export_client
# package that comes first on PYTHONPATH, so the source tree and .venv are left as they are. The
# ASan runtime is preloaded into the ordinary interpreter, PYTHONMALLOC=malloc gives every Python
# object (the blocks too) its own malloc block with redzones, and leak detection is off: CPython
# itself does not free everything at exit (test_kernel.py checks the kernel's own allocations
# with tracemalloc instead). Any report fails the script loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
CC=${CC:-gcc}

uv sync --locked --quiet
python=$(uv run --no-sync python -c 'import sys; print(sys.executable)')
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -R src/export_client "$work/"
rm -f "$work"/export_client/_kernel*.so
sanitizers="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
# shellcheck disable=SC2086  # the flags are meant to be split
"$CC" -std=c11 -O2 -Wall -Wextra -Werror $sanitizers -fPIC -shared -I"$include" \
  src/export_client/_kernel.c -o "$work/export_client/_kernel$suffix"
echo "built $work/export_client/_kernel$suffix with $sanitizers"

runtime=$("$CC" -print-file-name=libasan.so)
ubsan=$("$CC" -print-file-name=libubsan.so)
if [[ ! -e $runtime || ! -e $ubsan ]]; then
  echo "asan.sh: no sanitizer runtimes found for $CC ($runtime, $ubsan)" >&2
  exit 1
fi
export LD_PRELOAD="$runtime $ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$work/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/ubsan"
export PYTHONMALLOC=malloc
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
export EXPORT_COUNTER_HUGE_TESTS=1

loaded=$("$python" -c 'import export_client._kernel as k; print(k.__file__)')
if [[ $loaded != "$work"/* ]]; then
  echo "asan.sh: the tests would import $loaded, not the sanitized build" >&2
  exit 1
fi

status=0
"$python" -m pytest -p no:cacheprovider -q tests/client/test_kernel.py "$@" || status=$?

shopt -s nullglob
reports=("$work"/asan.* "$work"/ubsan.*)
if ((${#reports[@]})); then
  echo "asan.sh: THE SANITIZERS REPORTED ERRORS:" >&2
  cat "${reports[@]}" >&2
  exit 1
fi
if ((status)); then
  echo "asan.sh: the tests failed (exit $status) under the sanitizers" >&2
  exit "$status"
fi
echo "asan.sh: clean: no AddressSanitizer or UBSan report, tests passed"
