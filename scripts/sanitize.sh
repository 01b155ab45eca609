#!/usr/bin/env bash
# Builds the runtime and its tests with AddressSanitizer and
# UndefinedBehaviorSanitizer (build-asan/) and runs the tests that execute
# kernel code on the CPU: the reference kernels, the host builds of the CUDA
# library kernels (also with CUDA's threads as fibers, HostSimt.h, which
# tells AddressSanitizer of every switch), and the end-to-end runs on the
# CPU and on the emulated CUDA device (whose kernels are those host builds,
# with shared memory as stack arrays, so an out-of-bounds index is reported
# here before compute-sanitizer sees it on a GPU). Not part of
# scripts/test.sh: the instrumented build takes about 45 minutes on 2 cores.
# Exits non-zero on any report or failed test.
#
#   KILN_SANITIZE_JOBS  build parallelism (default: nproc)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-asan"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"

cmake -G Ninja -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DLLVM_DIR="$(llvm-config-19 --cmakedir)" \
  -DMLIR_DIR="$(llvm-config-19 --prefix)/lib/cmake/mlir" >/dev/null
tests=(kiln-kernels-tests kiln-paged-tests kiln-fp8-tests kiln-sampler-tests
       kiln-runtime-tests kiln-device-kernels-tests
       kiln-device-kernels-simt-tests kiln-e2e-tests)
ninja -C "$build" -j"${KILN_SANITIZE_JOBS:-$(nproc)}" "${tests[@]}"

# allow_user_poisoning=0: LLVM's allocators poison their free slabs when the
# code including their headers is instrumented, and the uninstrumented
# libMLIR then writes into them (a false use-after-poison). Leaks are not
# checked: MLIR keeps its contexts' storage until exit.
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:allow_user_poisoning=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for t in "${tests[@]}"; do
  echo "== $t"
  "$build/bin/$t" --gtest_brief=1
done
