// Feeds arbitrary text to the config parser. An accepted config must satisfy
// the invariants the model builders rely on without re-checking.
#include "frontend/Config.h"

#include <algorithm>
#include <cstdlib>

using namespace kiln::frontend;

static void check(bool condition) {
  if (!condition)
    std::abort();
}

static void checkAccepted(const ModelConfig &c) {
  check(c.hiddenSize > 0 && c.numHiddenLayers > 0 && c.vocabSize > 0);
  check(c.numAttentionHeads > 0 && c.numKeyValueHeads > 0);
  check(c.numAttentionHeads % c.numKeyValueHeads == 0);
  check(c.headDim > 0 && c.rmsNormEps > 0);
  if (c.mla)
    check(c.mla->qkRopeHeadDim % 2 == 0);
  else
    check(c.headDim % 2 == 0);
  if (c.moe) {
    check(c.moe->nGroup > 0 && c.moe->nRoutedExperts % c.moe->nGroup == 0);
    check(c.moe->topkGroup <= c.moe->nGroup);
    check(c.moe->numExpertsPerTok <= c.moe->nRoutedExperts);
    check(c.moe->moeLayerFreq > 0);
  }
  for (int64_t layer = 0; layer < std::min<int64_t>(c.numHiddenLayers, 8);
       ++layer)
    (void)c.isMoeLayer(layer);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string_view text(reinterpret_cast<const char *>(data), size);
  absl::StatusOr<ModelConfig> config = parseModelConfig(text, "fuzz.json");
  if (config.ok())
    checkAccepted(*config);
  else
    check(!config.status().message().empty());
  return 0;
}
