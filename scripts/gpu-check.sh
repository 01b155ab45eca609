#!/usr/bin/env bash
# Every GPU check, in one run on the GPU machine (CUDA, PyTorch and
# transformers; no MLIR), from the repository root with gpu-bundle/ from
# scripts/gpu-prepare.sh (or its gpu-bundle.tar.xz, unpacked first). Stages,
# in this order:
#
#   tests     the GPU-labelled tests: the driver test and the CUDA executor
#             against the CPU executor on every architecture, and under a
#             random continuous-batching schedule (kiln-gpu-tests); the
#             library kernels' host builds run too, as
#             a check of the carried binaries
#   numerics  against Hugging Face on the same GPU (tests/gpu/check_numerics.py):
#             every tiny golden model and the 4-layer V2-Lite-dimension model
#   memcheck  compute-sanitizer memcheck on prefill + decode steps of a tiny
#             model, of the hidden-512 FP8 model with per-expert GEMMs
#             (cuBLASLt's block-scaled FP8 kernels), with the tensor-core
#             kernels on, and of a decode batch of 20
#   profile   Nsight Compute's time per kernel of V2-Lite decode steps
#             (which kernel holds the step back), at each batch x context of
#             KILN_GPU_PROFILE_POINTS (default 1x1024), and of a prefill of
#             KILN_GPU_PROFILE_PREFILL tokens (default 2048; empty: none)
#   bench     bench/gpu_vs_torch.py
#
# Each stage runs under its own time limit, so that one that hangs leaves
# the others their time. Results go to $OUT (the device tool's output
# folder, which takes at most 8 files) or gpu-results/: gpu-check.log (all
# output), numerics.json, memcheck.log, profile-b<batch>-c<context>.csv,
# profile-prefill-<tokens>.csv, gpu_vs_torch.json.
# Exits non-zero when any stage fails; the summary lists each.
#
#   KILN_GPU_STAGES        stages to run (default: all, in the order above)
#   KILN_GPU_<STAGE>_S     a stage's time limit in seconds
#   KILN_GPU_NUMERICS_ARGS extra arguments of tests/gpu/check_numerics.py
#   KILN_GPU_BENCH_ARGS    extra arguments of bench/gpu_vs_torch.py
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$root/gpu-bundle"
out="${OUT:-$root/gpu-results}"
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
export PYTHONUNBUFFERED=1
stages="${KILN_GPU_STAGES:-tests numerics memcheck profile bench}"
summary=()
failed=0
stamp() { echo "== [$(date +%T)] $*"; }
record() { # name, status
  case $2 in
    0) summary+=("$1: ok") ;;
    124 | 137) summary+=("$1: TIMED OUT"); failed=1 ;;
    *) summary+=("$1: FAILED ($2)"); failed=1 ;;
  esac
}
limit() { # stage, default seconds
  local var="KILN_GPU_${1^^}_S"
  echo "${!var:-$2}"
}

# The archive, where it was carried, replaces what an earlier run unpacked.
if [[ -f "$root/gpu-bundle.tar.xz" ]]; then
  rm -rf "$bundle"
  tar -C "$root" -xJf "$root/gpu-bundle.tar.xz"
fi
if [[ ! -f "$bundle/manifest.json" ]]; then
  echo "gpu-check: no gpu-bundle/ (run scripts/gpu-prepare.sh on the build machine and carry gpu-bundle.tar.xz)"
  exit 2
fi
stamp "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
# cuBLASLt is loaded at run time: from the CUDA toolkit or PyTorch's wheels.
cublas="$( (ls /usr/local/cuda*/lib64/libcublasLt.so.1[23] 2>/dev/null;
            python3 -c "import nvidia, os; print(*[os.path.join(p, 'cublas', 'lib') for p in nvidia.__path__])" 2>/dev/null |
              xargs -r -I{} sh -c 'ls {}/libcublasLt.so.1[23] 2>/dev/null';
            find / -xdev -name 'libcublasLt.so.1[23]' 2>/dev/null) | head -1)"
export KILN_CUDA_LIBS="${cublas:+$(dirname "$cublas")}"
echo "cuBLASLt: ${cublas:-not found}"
export KILN_GPU_BUNDLE="$bundle"

for stage in $stages; do
  case $stage in
  tests)
    stamp "GPU-labelled tests"
    for t in kiln-cuda-driver-tests kiln-gpu-tests kiln-device-kernels-tests; do
      timeout "$(limit tests 240)" "$bundle/bin/$t" --gtest_brief=1
      record "$t" $?
    done
    ;;
  numerics)
    stamp "numerics against transformers"
    # shellcheck disable=SC2086
    timeout "$(limit numerics 300)" python3 "$root/tests/gpu/check_numerics.py" \
      --bundle "$bundle" --out "$out/numerics.json" ${KILN_GPU_NUMERICS_ARGS:-} > /dev/null
    record "numerics vs transformers" $?
    ;;
  memcheck)
    stamp "compute-sanitizer memcheck"
    sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
    if [[ -z "$sanitizer" ]]; then
      summary+=("memcheck: NOT RUN (no compute-sanitizer here)")
      continue
    fi
    timeout "$(limit memcheck 180)" "$sanitizer" --tool memcheck --error-exitcode 1 \
      --leak-check full --target-processes all \
      "$bundle/bin/kiln-run" run "$bundle/artifacts/deepseek-v3.kiln" --device cuda \
      --tokens 1,2,3,4,5,6,7 --max-new-tokens 6 > "$out/memcheck.log" 2>&1
    status=$?
    tail -5 "$out/memcheck.log"
    record "compute-sanitizer memcheck (prefill + decode)" $status
    # cuBLASLt's block-scaled FP8 GEMMs and the per-expert GEMMs: a 20-token
    # prompt of the hidden-512 FP8 model (appended to the same log).
    probe="$bundle/artifacts/compare/deepseek-v3-fp8-512.kiln"
    if [[ -f "$probe" ]]; then
      KILN_EXPERT_GEMMS=per-expert timeout "$(limit memcheck 180)" "$sanitizer" \
        --tool memcheck --error-exitcode 1 --leak-check full --target-processes all \
        "$bundle/bin/kiln-run" run "$probe" --device cuda \
        --tokens "$(seq -s, 1 20)" --max-new-tokens 2 >> "$out/memcheck.log" 2>&1
      status=$?
      tail -5 "$out/memcheck.log"
      record "compute-sanitizer memcheck (FP8 cuBLASLt, per-expert GEMMs)" $status
    fi
    # The tensor-core GEMMs (bf16 and FP8 weights) and attention for all
    # they take (f32 rows, and a bf16 latent cache's packed rows).
    status=0
    for model in deepseek-v2-lite-bf16 deepseek-v3-fp8 deepseek-v3-bf16cache; do
      KILN_MMA_GEMMS=on KILN_MMA_ATTENTION=on timeout "$(limit memcheck 180)" "$sanitizer" \
        --tool memcheck --error-exitcode 1 --leak-check full --target-processes all \
        "$bundle/bin/kiln-run" run "$bundle/artifacts/compare/$model.kiln" --device cuda \
        --tokens 1,2,3,4,5,6,7 --max-new-tokens 6 >> "$out/memcheck.log" 2>&1 || status=1
    done
    tail -5 "$out/memcheck.log"
    record "compute-sanitizer memcheck (tensor-core GEMMs and attention)" $status
    # A decode batch of 20: cuBLASLt's GEMMs and the tensor-core GEMMs of
    # several rows per matrix inside the captured decode graph's replays.
    prompts=()
    for i in $(seq 1 20); do prompts+=(--prompt "$i,7,$((3 + 2 * i))"); done
    timeout "$(limit memcheck 180)" "$sanitizer" --tool memcheck --error-exitcode 1 \
      --leak-check full --target-processes all \
      "$bundle/bin/kiln-run" generate "$bundle/artifacts/compare/deepseek-v2-lite-bf16-wide.kiln" \
      --device cuda "${prompts[@]}" --max-new-tokens 4 >> "$out/memcheck.log" 2>&1
    status=$?
    tail -5 "$out/memcheck.log"
    record "compute-sanitizer memcheck (decode batch of 20)" $status
    ;;
  profile)
    stamp "Nsight Compute: kernel times of V2-Lite decode steps"
    ncu="$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
    if [[ -z "$ncu" ]]; then
      summary+=("profile: NOT RUN (no ncu here)")
      continue
    fi
    weights="$root/gpu-work/v2lite4"
    python3 -c "import sys; sys.path.insert(0, '$root/bench'); import gpu_common; \
gpu_common.write_v2lite_checkpoint('$weights')"
    status=0
    for point in ${KILN_GPU_PROFILE_POINTS:-1x1024}; do
      csv="$out/profile-b${point%x*}-c${point#*x}.csv"
      timeout "$(limit profile 180)" "$ncu" --clock-control none --target-processes all \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --print-units base \
        "$bundle/bin/kiln-run" bench "$bundle/artifacts/v2lite4.kiln" --device cuda \
        --weights-dir "$weights" --batch "${point%x*}" --context "${point#*x}" \
        --synthetic-context --steps 2 --repeats 1 > "$csv" 2> "$out/profile.err" || status=1
      tail -3 "$out/profile.err"
      rm -f "$out/profile.err"
      echo "decode batch ${point%x*}, context ${point#*x}:"
      python3 "$root/bench/ncu_summary.py" "$csv" --top 12 || status=1
    done
    prefill="${KILN_GPU_PROFILE_PREFILL-2048}"
    if [[ -n "$prefill" ]]; then
      csv="$out/profile-prefill-$prefill.csv"
      timeout "$(limit profile 180)" "$ncu" --clock-control none --target-processes all \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --print-units base \
        "$bundle/bin/kiln-run" bench "$bundle/artifacts/v2lite4.kiln" --device cuda \
        --weights-dir "$weights" --batch 1 --context "$prefill" --steps 1 --repeats 1 \
        > "$csv" 2> "$out/profile.err" || status=1
      tail -3 "$out/profile.err"
      rm -f "$out/profile.err"
      echo "prefill of $prefill tokens (and one decode step):"
      python3 "$root/bench/ncu_summary.py" "$csv" --top 12 || status=1
    fi
    record "profile" $status
    ;;
  bench)
    stamp "benchmark against PyTorch"
    # shellcheck disable=SC2086
    timeout "$(limit bench 420)" python3 "$root/bench/gpu_vs_torch.py" --bundle "$bundle" \
      -o "$out/gpu_vs_torch.json" ${KILN_GPU_BENCH_ARGS:-}
    record "benchmark" $?
    ;;
  *)
    summary+=("$stage: unknown stage")
    failed=1
    ;;
  esac
done

echo
stamp "gpu-check summary"
printf '  %s\n' "${summary[@]}"
exit $failed
