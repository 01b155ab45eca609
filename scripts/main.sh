#!/usr/bin/env bash
# The main job: set up and build, write the default model (a small
# DeepSeek-V3-architecture checkpoint with seeded random weights), compile it
# to a `.kiln` artifact, describe the artifact, and generate tokens from it on
# the CPU for a batch of two prompts.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KILN_BUILD_DIR:-$root/build}"
"$root/scripts/setup.sh"

kiln="$build/bin/kiln"
model="$build/models/tiny-deepseek-v3"
artifact="$build/models/tiny-deepseek-v3.kiln"
echo "== kiln init-model --preset tiny-deepseek-v3 -o $model"
"$kiln" init-model --preset tiny-deepseek-v3 --seed 0 -o "$model"
echo "== kiln compile-model $model -o $artifact"
"$kiln" compile-model "$model" -o "$artifact"
echo "== kiln inspect $artifact"
"$kiln" inspect "$artifact"
echo "== kiln generate $artifact (two prompts, 16 new tokens each)"
"$kiln" generate "$artifact" --prompt 1,2,3,4,5,6,7,8 --prompt 9,10,11 \
  --max-new-tokens 16
