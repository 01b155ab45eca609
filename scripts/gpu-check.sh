#!/usr/bin/env bash
# Every GPU check, in one run on the GPU machine (CUDA, PyTorch and
# transformers; no MLIR), from the repository root with gpu-bundle/ from
# scripts/gpu-prepare.sh:
#
#   1. the GPU-labelled tests (the driver test; the library kernels' host
#      builds run too, as a sanity check of the carried binaries);
#   2. numerics against Hugging Face on the same GPU (tests/gpu/check_numerics.py):
#      every tiny golden model and the 4-layer V2-Lite-dimension model;
#   3. compute-sanitizer memcheck on prefill + decode steps of a tiny model;
#   4. the benchmark (bench/gpu_vs_torch.py).
#
# Results go to $OUT (the device tool's output folder) or gpu-results/.
# Exits non-zero when any check fails; the summary lists each.
#
#   KILN_GPU_SKIP_BENCH=1   checks only
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$root/gpu-bundle"
out="${OUT:-$root/gpu-results}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
summary=()
failed=0
record() { # name, status
  summary+=("$1: $([[ $2 == 0 ]] && echo ok || echo FAILED)")
  [[ $2 == 0 ]] || failed=1
}

if [[ ! -f "$bundle/manifest.json" ]]; then
  echo "gpu-check: no gpu-bundle/ (run scripts/gpu-prepare.sh on the build machine and carry it)" >&2
  exit 2
fi
nvidia-smi | tee "$out/nvidia-smi.txt"

for t in kiln-cuda-driver-tests kiln-device-kernels-tests; do
  "$bundle/bin/$t" --gtest_output="json:$out/$t.json" > "$out/$t.log" 2>&1
  status=$?
  grep -E "SKIPPED|PASSED|FAILED" "$out/$t.log" | tail -3
  record "$t" $status
done

python3 "$root/tests/gpu/check_numerics.py" --bundle "$bundle" \
  --out "$out/numerics.json" > /dev/null 2> >(tee "$out/numerics.log" >&2)
record "numerics vs transformers" $?

sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if [[ -n "$sanitizer" ]]; then
  "$sanitizer" --tool memcheck --error-exitcode 1 --leak-check full \
    "$bundle/bin/kiln-run" run "$bundle/artifacts/deepseek-v3.kiln" --device cuda \
    --tokens 1,2,3,4,5,6,7 --max-new-tokens 6 > "$out/memcheck.log" 2>&1
  status=$?
  tail -3 "$out/memcheck.log"
  record "compute-sanitizer memcheck (prefill + decode)" $status
else
  summary+=("compute-sanitizer: NOT RUN (not installed here)")
fi

if [[ "${KILN_GPU_SKIP_BENCH:-0}" != 1 ]]; then
  python3 "$root/bench/gpu_vs_torch.py" --bundle "$bundle" -o "$out/gpu_vs_torch.json" \
    2> >(tee "$out/bench.log" >&2)
  record "benchmark" $?
fi

echo
echo "gpu-check summary:"
printf '  %s\n' "${summary[@]}"
exit $failed
