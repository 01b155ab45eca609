#!/usr/bin/env bash
# Installs Kiln's build dependencies from Debian packages (only those that
# are missing) and configures + builds Kiln into build/. Idempotent: a second
# run installs nothing and rebuilds only what changed.
#
#   KILN_BUILD_DIR   build directory (default: build)
#   KILN_JOBS        build parallelism (default: nproc)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KILN_BUILD_DIR:-$root/build}"

packages=(
  cmake ninja-build g++ ccache python3
  llvm-19-dev libmlir-19-dev mlir-19-tools llvm-19-tools
  clang-19 libclang-rt-19-dev libomp-19-dev
  libflatbuffers-dev flatbuffers-compiler
  libabsl-dev libcli11-dev nlohmann-json3-dev
  googletest libgtest-dev libgmock-dev
  libopenmpi-dev openmpi-bin
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

cmake_args=(-G Ninja -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
            -DLLVM_DIR="$(llvm-config-19 --cmakedir)"
            -DMLIR_DIR="$(llvm-config-19 --prefix)/lib/cmake/mlir")
cmake "${cmake_args[@]}" >/dev/null
ninja -C "$build" -j"${KILN_JOBS:-$(nproc)}"
