#!/usr/bin/env bash
# The main job: set up and build, write the default model (a small
# DeepSeek-V3-architecture checkpoint with seeded random weights), and print
# the kiln IR the compiler builds from it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KILN_BUILD_DIR:-$root/build}"
"$root/scripts/setup.sh"

model="$build/models/tiny-deepseek-v3"
echo "== kiln init-model --preset tiny-deepseek-v3 -> $model"
"$build/bin/kiln" init-model --preset tiny-deepseek-v3 --seed 0 -o "$model"
echo "== kiln compile-model $model --emit=mlir"
"$build/bin/kiln" compile-model "$model" --emit=mlir
