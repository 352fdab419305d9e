#!/usr/bin/env bash
# The test command (README Quick start, .ci/run): set-up, release build + tests, then the
# ASan/UBSan build + tests. GPU tests are compiled (when nvcc is present) but not run here.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/build.sh" release
ctest --preset release
if [ "${DSV3_SKIP_ASAN:-0}" != 1 ]; then
  "$root/scripts/build.sh" asan
  ctest --preset asan
fi
