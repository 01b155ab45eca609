#!/usr/bin/env bash
# Prepares the GPU check on this (CPU) machine: the GPU machine has CUDA,
# PyTorch and transformers but no MLIR, so the artifacts are compiled here
# and carried with the runtime-only binaries in gpu-bundle/ (ignored by git,
# a few MiB; the device tool's `carry` takes it):
#
#   gpu-bundle/bin/       kiln-run and the GPU-labelled test binaries, as
#                         wrappers that put lib/ (and $KILN_CUDA_LIBS, where
#                         gpu-check.sh found cuBLASLt) on the library path
#                         of these programs only, not of Python's
#   gpu-bundle/libexec/   the programs themselves
#   gpu-bundle/lib/       the shared libraries they need beyond the C library
#   gpu-bundle/artifacts/ every tiny golden model and the 4-layer
#                         DeepSeek-V2-Lite-dimension model (external
#                         weights), compiled with --target=cpu,sm_90a
#   gpu-bundle/artifacts/compare/  the GPU-vs-CPU executor test's artifacts
#                         (kiln-gpu-tests): each architecture, MLA naive and
#                         absorbed, FP8 weights and latent cache, small
#                         prefill chunks
#   gpu-bundle/manifest.json
#
# and the same as gpu-bundle.tar.xz (binaries and weights compress ~3x), which
# is what to carry: the device tool takes 64 MiB with the working tree, and
# the directory alone comes close. Then, on the GPU machine:
# bash scripts/gpu-check.sh (it unpacks the archive where there is no
# gpu-bundle/).
#
#   KILN_BUILD_DIR   the built tree (default: build)
#   KILN_SKIP_V2LITE=1  leave out the V2-Lite model (its checkpoint, written
#                    here only to compile against, takes ~4.4 GB and minutes)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KILN_BUILD_DIR:-$root/build}"
bundle="$root/gpu-bundle"
kiln="$build/bin/kiln"
for tool in kiln kiln-run kiln-device-kernels-tests kiln-cuda-driver-tests kiln-gpu-tests; do
  if [[ ! -x "$build/bin/$tool" ]]; then
    echo "gpu-prepare: $build/bin/$tool is missing (build with the CUDA toolkit first)" >&2
    exit 1
  fi
done

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/libexec" "$bundle/lib" "$bundle/artifacts/compare"
binaries=(kiln-run kiln-device-kernels-tests kiln-cuda-driver-tests kiln-gpu-tests)
for b in "${binaries[@]}"; do
  cp "$build/bin/$b" "$bundle/libexec/"
  cat > "$bundle/bin/$b" <<EOF
#!/usr/bin/env bash
here="\$(cd "\$(dirname "\${BASH_SOURCE[0]}")/.." && pwd)"
export LD_LIBRARY_PATH="\$here/lib\${KILN_CUDA_LIBS:+:\$KILN_CUDA_LIBS}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "\$here/libexec/$b" "\$@"
EOF
  chmod +x "$bundle/bin/$b"
done
# Shared libraries beyond the C library and the driver (absl, flatbuffers,
# OpenMP, the C++ library: the GPU machine may lack them or have others).
for b in "${binaries[@]}"; do
  ldd "$build/bin/$b" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libcuda.so*|libnvidia*) ;;
    *) cp -L "$lib" "$bundle/lib/" ;;
  esac
done

bounds=(--max-batch 4 --max-context 128 --max-prefill 32)
tiny=()
for dir in "$root"/tests/golden/*/; do
  name="$(basename "$dir")"
  [[ -f "$dir/model.safetensors" ]] || continue
  "$kiln" compile-model "$dir" -o "$bundle/artifacts/$name.kiln" \
    --target=cpu,sm_90a "${bounds[@]}"
  tiny+=("\"$name\"")
done

# The GPU-vs-CPU executor test's variants (those of tests/e2e/EmulatedGpuTest.cpp,
# with its bounds: a 22-token prompt prefilled in chunks of 16). Tolerance:
# fp32 summation order for f32 weights; bf16 resolution where cuBLASLt rounds
# activations to bf16 or FP8 activation codes may round apart.
compare=()
variant() { # name, model (a golden model's name or a checkpoint folder), tolerance, flags...
  local name="$1" model="$2" tolerance="$3"
  shift 3
  [[ "$model" == */* ]] || model="$root/tests/golden/$model"
  "$kiln" compile-model "$model" -o "$bundle/artifacts/compare/$name.kiln" \
    --target=cpu,sm_90a --max-batch 4 --max-prefill 16 --max-context 64 "$@"
  compare+=("{\"name\": \"$name\", \"tolerance\": $tolerance}")
}
variant deepseek-v3 deepseek-v3 1e-3
variant deepseek-v3-naive deepseek-v3 1e-3 --mla naive
variant deepseek-v3-fp8 deepseek-v3 1e-2 --mla absorbed --quantize fp8 --kv-cache-dtype fp8
variant deepseek-v3-bf16cache deepseek-v3 1e-2 --mla absorbed --kv-cache-dtype bf16
variant deepseek-v2 deepseek-v2 1e-3
variant deepseek-v2-lite deepseek-v2-lite 1e-3
variant deepseek-v2-lite-bf16 deepseek-v2-lite-bf16 1e-2
variant qwen2 qwen2 1e-3
variant llama-bf16 llama-bf16 1e-2
# Shapes the tiny presets leave out (tests/golden/presets): every kernel's
# tile and vector tails, odd head counts, GQA 3:1, grouped routing.
variant deepseek-v3-odd deepseek-v3-odd 1e-3
variant deepseek-v2-odd-naive deepseek-v2-odd 1e-3 --mla naive
variant qwen2-odd qwen2-odd 1e-3
variant llama-odd-bf16 llama-odd-bf16 1e-2
# The same prompts with each expert's rows as their own GEMM (cuBLASLt where
# an expert has 16 rows or more).
compare+=('{"name": "deepseek-v2-lite-bf16-per-expert", "artifact": "deepseek-v2-lite-bf16", "tolerance": 1e-2, "env": {"KILN_EXPERT_GEMMS": "per-expert"}}')
# Every GEMM (bf16, FP8) and attention the tensor-core kernels take on
# them, decode's single rows too.
compare+=('{"name": "deepseek-v2-lite-bf16-mma", "artifact": "deepseek-v2-lite-bf16", "tolerance": 1e-2, "env": {"KILN_MMA_GEMMS": "on", "KILN_MMA_ATTENTION": "on"}}')
compare+=('{"name": "llama-bf16-mma", "artifact": "llama-bf16", "tolerance": 1e-2, "env": {"KILN_MMA_GEMMS": "on", "KILN_MMA_ATTENTION": "on"}}')
compare+=('{"name": "llama-odd-bf16-mma", "artifact": "llama-odd-bf16", "tolerance": 1e-2, "env": {"KILN_MMA_GEMMS": "on", "KILN_MMA_ATTENTION": "on"}}')
compare+=('{"name": "deepseek-v3-fp8-mma", "artifact": "deepseek-v3-fp8", "tolerance": 1e-2, "env": {"KILN_MMA_GEMMS": "on"}}')
compare+=('{"name": "deepseek-v3-bf16cache-mma", "artifact": "deepseek-v3-bf16cache", "tolerance": 1e-2, "env": {"KILN_MMA_ATTENTION": "on"}}')
# Decode batches of 20 (cuBLASLt's GEMMs inside the decode graph, the
# tensor-core GEMMs of several rows per matrix: a serving batch's path).
# The MoE model's bf16 activations put its logits up to 1% of the row's
# largest apart from the CPU's (tests/e2e/EmulatedDriverTest.cpp).
for model in llama-bf16 deepseek-v2-lite-bf16; do
  "$kiln" compile-model "$root/tests/golden/$model" \
    -o "$bundle/artifacts/compare/$model-wide.kiln" \
    --target=cpu,sm_90a --max-batch 20 --max-prefill 16 --max-context 64
done
compare+=('{"name": "llama-bf16-wide", "tolerance": 1e-2, "sequences": 20}')
compare+=('{"name": "deepseek-v2-lite-bf16-wide", "tolerance": 2e-2, "sequences": 20}')
# The same batch with no cuBLASLt: its 20-row GEMMs on the tensor-core
# GEMMs (the benchmark's KILN_CUBLASLT=0 decode).
compare+=('{"name": "deepseek-v2-lite-bf16-wide-no-cublaslt", "artifact": "deepseek-v2-lite-bf16-wide", "tolerance": 2e-2, "sequences": 20, "env": {"KILN_CUBLASLT": "0"}}')
# Plain launches (no programmatic dependent launch): where the default run
# fails and this passes, suspect a kernel that touches memory before
# awaitPrecedingKernels.
compare+=('{"name": "deepseek-v2-lite-bf16-no-pdl", "artifact": "deepseek-v2-lite-bf16", "tolerance": 1e-2, "env": {"KILN_PDL": "off"}}')
# The kernel profile on (KILN_PROFILE=1: a hold kernel, an event after each
# launch, decode steps launched one by one as their graph holds them, the
# per-expert GEMMs on one stream); the profile is printed as each session
# ends.
compare+=('{"name": "deepseek-v2-lite-bf16-profiled", "artifact": "deepseek-v2-lite-bf16", "tolerance": 1e-2, "env": {"KILN_PROFILE": "1", "KILN_EXPERT_GEMMS": "per-expert"}}')

# Continuous batching under the random schedule of tests/runtime/RandomSchedule.h
# (tests/e2e/ContinuousBatchingTest.cpp's bounds: prefill chunks of 8, 4
# sequences, 320 tokens, a 12-block cache): the device's batched steps
# against each sequence alone on the CPU. f32 weights: a bf16 model's
# numerics follow the batch's size (one row per matrix is a GEMV of f32
# activations, more go to the tensor cores in bf16), which an MoE router
# amplifies where two experts' scores are close.
schedules=()
schedule() { # name, golden model, tolerance
  "$kiln" compile-model "$root/tests/golden/$2" -o "$bundle/artifacts/compare/$1.kiln" \
    --target=cpu,sm_90a --max-batch 4 --max-prefill 8 --max-context 320
  schedules+=("{\"name\": \"$1\", \"tolerance\": $3, \"max_batch\": 4, \"max_context\": 320, \"cache_blocks\": 12}")
}
schedule qwen2-schedule qwen2 1e-3
schedule deepseek-v2-lite-schedule deepseek-v2-lite 1e-3

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# FP8 weights whose GEMMs cuBLASLt's block-scaled kernels take (k a multiple
# of 512): a one-layer DeepSeek-V3-style model with hidden size 512.
if python3 -c "import torch, transformers, safetensors" 2>/dev/null; then
  python3 -c "import sys; sys.path.insert(0, '$root/bench'); import gpu_common; \
gpu_common.write_fp8_probe_checkpoint('$work/fp8-probe')"
  variant deepseek-v3-fp8-512 "$work/fp8-probe" 1e-2 --mla absorbed --quantize fp8
  compare+=('{"name": "deepseek-v3-fp8-512-per-expert", "artifact": "deepseek-v3-fp8-512", "tolerance": 1e-2, "env": {"KILN_EXPERT_GEMMS": "per-expert"}}')
else
  echo "gpu-prepare: no torch here, so no FP8 model for cuBLASLt's block-scaled GEMMs" >&2
fi

v2lite="null"
if [[ "${KILN_SKIP_V2LITE:-0}" != 1 ]]; then
  if ! python3 -c "import torch, transformers, safetensors" 2>/dev/null; then
    echo "gpu-prepare: the V2-Lite checkpoint is written with torch and transformers:" \
      "python3 -m pip install torch transformers safetensors (or KILN_SKIP_V2LITE=1)" >&2
    exit 1
  fi
  python3 -c "import sys; sys.path.insert(0, '$root/bench'); import gpu_common; \
gpu_common.write_v2lite_checkpoint('$work/v2lite4')"
  read -r batch context prefill prefill_batch < <(python3 -c "import sys; sys.path.insert(0, '$root/bench'); \
import gpu_common as g; print(g.V2LITE_MAX_BATCH, g.V2LITE_MAX_CONTEXT, g.V2LITE_MAX_PREFILL, g.V2LITE_MAX_PREFILL_BATCH)")
  "$kiln" compile-model "$work/v2lite4" -o "$bundle/artifacts/v2lite4.kiln" \
    --weights=external --target=cpu,sm_90a --max-batch "$batch" \
    --max-context "$context" --max-prefill "$prefill" --max-prefill-batch "$prefill_batch"
  # The same model without this pipeline's launch-saving rewrites (gated
  # FFN GEMMs, folded head slices, linear groups, horizontally merged fused
  # kernels, cache rows stored by fused kernels): the benchmark times its
  # batch-1 decode in the same run. External weights: the artifact is small.
  "$kiln" compile-model "$work/v2lite4" -o "$bundle/artifacts/v2lite4-unfused.kiln" \
    --weights=external --target=cpu,sm_90a --max-batch "$batch" \
    --max-context "$context" --max-prefill "$prefill" --max-prefill-batch "$prefill_batch" \
    --no-fuse-gated-linear --no-fold-head-slices --no-group-linears \
    --no-fuse-horizontal --no-fuse-kv-append
  # With a bf16 latent cache (--kv-cache-dtype=bf16), as HF's bf16 model
  # caches: the benchmark times its decode at every batch and context.
  "$kiln" compile-model "$work/v2lite4" -o "$bundle/artifacts/v2lite4-bf16cache.kiln" \
    --weights=external --target=cpu,sm_90a --max-batch "$batch" \
    --max-context "$context" --max-prefill "$prefill" --max-prefill-batch "$prefill_batch" \
    --kv-cache-dtype=bf16
  v2lite="{\"artifact\": \"v2lite4.kiln\", \"unfused_artifact\": \"v2lite4-unfused.kiln\", \"bf16_cache_artifact\": \"v2lite4-bf16cache.kiln\", \"max_batch\": $batch, \"max_context\": $context, \"max_prefill\": $prefill}"
fi

cat > "$bundle/manifest.json" <<EOF
{
  "commit": "$(git -C "$root" rev-parse HEAD)",
  "tiny": [$(IFS=,; echo "${tiny[*]}")],
  "compare": [$(IFS=,; echo "${compare[*]}")],
  "schedules": [$(IFS=,; echo "${schedules[*]}")],
  "v2lite": $v2lite
}
EOF
du -sh "$bundle"
archive="$root/gpu-bundle.tar.xz"
tar -C "$root" -cf - gpu-bundle | xz -T0 -6 > "$archive.tmp"
mv "$archive.tmp" "$archive"
# The device tool carries the working tree (tracked and untracked files git
# does not ignore) plus what `carry` names, 64 MiB in all.
carried=$(( $(stat -c %s "$archive") + $(git -C "$root" ls-files -co --exclude-standard -z |
  (cd "$root" && xargs -0 du -cb 2>/dev/null) | awk '$2 == "total" {s += $1} END {print s + 0}') ))
echo "gpu-prepare: $((carried / 1048576)) MiB to carry (gpu-bundle.tar.xz and the working tree)"
if (( carried > 64 * 1048576 )); then
  echo "gpu-prepare: that is over the 64 MiB the device tool carries" >&2
  exit 1
fi
echo "gpu-prepare: carry gpu-bundle.tar.xz and run: bash scripts/gpu-check.sh"
