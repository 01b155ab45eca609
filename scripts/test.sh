#!/usr/bin/env bash
# Runs every test: set up and build, then a short fuzzing smoke run (the parsers
# of untrusted bytes, the artifact loader, the session API) and CTest (lit +
# FileCheck suites and GoogleTest).
#
#   KILN_FUZZ_SECONDS  seconds per fuzzer (default 20)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KILN_BUILD_DIR:-$root/build}"
"$root/scripts/setup.sh"

KILN_FUZZ_SECONDS="${KILN_FUZZ_SECONDS:-20}" "$root/scripts/fuzz-smoke.sh"
# Last, so that CTest's summary closes the output.
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
