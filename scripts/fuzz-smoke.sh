#!/usr/bin/env bash
# Builds the fuzzers (the parsers, the artifact loader, the session API) with
# clang and runs each for a bounded time on a
# scratch copy of the seed corpus (so the committed seeds stay small). Exits
# non-zero if a fuzzer finds a crash, leak or sanitizer report.
#
#   KILN_FUZZ_SECONDS  seconds per fuzzer (default 30)
#   KILN_FUZZ_SEED     libFuzzer seed (default 1: runs are repeatable; CI
#                      explores what a local run of the same length did)
#   KILN_FUZZ_JOBS     build parallelism (default 2)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-fuzz"
seconds="${KILN_FUZZ_SECONDS:-30}"

# Tests stay on because the top level only enters tests/ (and so tests/fuzz)
# when they are; only the fuzz targets get built.
CC=clang-19 CXX=clang++-19 cmake -G Ninja -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKILN_ENABLE_COMPILER=OFF \
  -DKILN_ENABLE_TESTS=ON \
  -DKILN_ENABLE_FUZZERS=ON >/dev/null
ninja -C "$build" -j"${KILN_FUZZ_JOBS:-2}" kiln-fuzz-safetensors kiln-fuzz-config \
  kiln-fuzz-artifact kiln-fuzz-session

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# Artifact seeds are compiled fresh by the main build's kiln from small
# configs, so they always match the current format.
kiln="${KILN_BUILD_DIR:-$root/build}/bin/kiln"
if [[ ! -x "$kiln" ]]; then
  echo "fuzz-smoke: $kiln is missing; run scripts/setup.sh first" >&2
  exit 1
fi
mkdir -p "$scratch/corpus-artifact"
for config in "$root"/tests/fuzz/seeds/artifact-*.json; do
  name="$(basename "$config" .json)"
  "$kiln" init-model --config "$config" --dtype F32 -o "$scratch/$name"
  "$kiln" compile-model "$scratch/$name" -o "$scratch/corpus-artifact/$name.kiln" \
    --max-batch 2 --max-context 8 --max-prefill 4
done
# Inputs that once crashed the loader stay in the corpus.
cp "$root"/tests/fuzz/corpus/artifact/*.kiln "$scratch/corpus-artifact/"
# FP8 weights and an FP8 latent cache reach the FP8 verifier paths.
"$kiln" compile-model "$scratch/artifact-deepseek-v3" \
  -o "$scratch/corpus-artifact/artifact-deepseek-v3-fp8.kiln" \
  --max-batch 2 --max-context 8 --max-prefill 4 \
  --quantize=fp8 --kv-cache-dtype=fp8

# The session fuzzer's model (it mutates calls, not the artifact), and a
# corpus of its own.
cp "$scratch/corpus-artifact/artifact-deepseek-v3.kiln" "$scratch/session.kiln"
export KILN_FUZZ_SESSION_ARTIFACT="$scratch/session.kiln"
mkdir -p "$scratch/corpus-session"

status=0
for target in safetensors config artifact session; do
  corpus="$scratch/corpus-$target"
  [[ -d "$corpus" ]] || cp -r "$root/tests/fuzz/corpus/$target" "$corpus"
  echo "== kiln-fuzz-$target for ${seconds}s"
  if ! (cd "$scratch" && "$build/bin/kiln-fuzz-$target" \
          -max_total_time="$seconds" -seed="${KILN_FUZZ_SEED:-1}" \
          -print_final_stats=1 -print_funcs=0 \
          -artifact_prefix="$scratch/$target-" "$corpus"); then
    echo "kiln-fuzz-$target FAILED; reproducer(s):" >&2
    mkdir -p "$build/fuzz-artifacts"
    cp "$scratch/$target-"* "$build/fuzz-artifacts/" 2>/dev/null || true
    ls "$build/fuzz-artifacts" >&2 || true
    status=1
  fi
done
exit "$status"
