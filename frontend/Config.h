// A validated Hugging Face `config.json` for the architectures Kiln compiles.
//
// Parsing checks every key the builders read: presence, JSON type, range and
// cross-field consistency (divisibility, group counts). Errors name the file
// and the field, e.g. `config.json: field 'n_group': 3 does not divide
// n_routed_experts (64)`.
#ifndef KILN_FRONTEND_CONFIG_H
#define KILN_FRONTEND_CONFIG_H

#include "frontend/DType.h"

#include "absl/status/statusor.h"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace kiln::frontend {

enum class Architecture { DeepseekV2, DeepseekV3, Qwen2, Llama };

/// The Hugging Face class name, e.g. "DeepseekV3ForCausalLM".
std::string_view architectureName(Architecture arch);

enum class RopeType { Default, Yarn, Llama3 };

/// `rope_scaling` (absent means RopeType::Default with no scaling).
struct RopeScaling {
  RopeType type = RopeType::Default;
  double factor = 1.0;
  int64_t originalMaxPositionEmbeddings = 0;
  // YaRN.
  double betaFast = 32.0;
  double betaSlow = 1.0;
  double mscale = 1.0;
  /// HF scales cos/sin by mscale(factor, mscale) / mscale(factor,
  /// mscale_all_dim) only when both are given, else by mscale(factor, 1).
  bool mscaleGiven = false;
  double mscaleAllDim = 0.0;
  // llama3.
  double lowFreqFactor = 1.0;
  double highFreqFactor = 4.0;
};

/// Multi-head Latent Attention dimensions (DeepSeek-V2/V3).
struct MlaConfig {
  std::optional<int64_t> qLoraRank; // null in V2-Lite: q = W_Q x directly.
  int64_t kvLoraRank = 0;
  int64_t qkNopeHeadDim = 0;
  int64_t qkRopeHeadDim = 0;
  int64_t vHeadDim = 0;
  int64_t qkHeadDim() const { return qkNopeHeadDim + qkRopeHeadDim; }
};

enum class ScoringFunc { Softmax, Sigmoid };
enum class TopkMethod { Greedy, GroupLimitedGreedy, NoauxTc };

std::string_view scoringFuncName(ScoringFunc f);
std::string_view topkMethodName(TopkMethod m);

/// DeepSeekMoE routing and expert sizes.
struct MoeConfig {
  int64_t nRoutedExperts = 0;
  int64_t nSharedExperts = 0;
  int64_t numExpertsPerTok = 0;
  int64_t moeIntermediateSize = 0;
  int64_t firstKDenseReplace = 0;
  int64_t moeLayerFreq = 1;
  int64_t nGroup = 1;
  int64_t topkGroup = 1;
  TopkMethod topkMethod = TopkMethod::Greedy;
  ScoringFunc scoringFunc = ScoringFunc::Softmax;
  bool normTopkProb = false;
  double routedScalingFactor = 1.0;
};

/// `quantization_config` of a natively quantized checkpoint (DeepSeek-V3 FP8).
struct QuantizationConfig {
  std::string quantMethod;      // "fp8"
  std::string fmt;              // "e4m3"
  std::string activationScheme; // "dynamic"
  int64_t weightBlockRows = 128;
  int64_t weightBlockCols = 128;
  /// `scale_fmt: "ue8m0"` (DeepSeek-V3.1 and later): power-of-two activation
  /// scales.
  bool ue8m0Scales = false;
};

struct ModelConfig {
  /// The file the config came from, for messages.
  std::string sourceName;
  Architecture architecture = Architecture::Llama;
  std::string modelType;

  int64_t hiddenSize = 0;
  int64_t intermediateSize = 0;
  int64_t numHiddenLayers = 0;
  int64_t numAttentionHeads = 0;
  int64_t numKeyValueHeads = 0;
  /// Per-head dimension for GQA attention (`head_dim`, defaulting to
  /// hidden_size / num_attention_heads). Unused by MLA.
  int64_t headDim = 0;
  int64_t vocabSize = 0;
  int64_t maxPositionEmbeddings = 0;
  double rmsNormEps = 1e-6;
  double ropeTheta = 10000.0;
  RopeScaling ropeScaling;
  bool tieWordEmbeddings = false;
  /// Bias on the q/k/v projections (always on for Qwen2, `attention_bias`
  /// for Llama/DeepSeek).
  bool qkvBias = false;
  /// Bias on the output projection (Llama `attention_bias`).
  bool oBias = false;
  bool mlpBias = false;
  double initializerRange = 0.02;
  /// `torch_dtype`: the dtype weights are stored in (F32, BF16 or F16).
  DType torchDtype = DType::BF16;

  std::optional<MlaConfig> mla;
  /// DeepSeek's rotary dimensions come as adjacent pairs (`rope_interleave`,
  /// true unless a V3 config says otherwise).
  bool ropeInterleave = false;
  std::optional<MoeConfig> moe;
  /// Multi-token-prediction modules (`num_nextn_predict_layers`, V3).
  int64_t numNextnPredictLayers = 0;
  std::optional<QuantizationConfig> quantization;

  /// True when decoder layer `layer` has a MoE FFN rather than a dense MLP.
  bool isMoeLayer(int64_t layer) const;
};

/// Parses and validates config JSON text. `sourceName` prefixes every error.
absl::StatusOr<ModelConfig> parseModelConfig(std::string_view json,
                                             std::string_view sourceName);

/// Reads `path` (a config.json, or a directory holding one) and parses it.
absl::StatusOr<ModelConfig> loadModelConfig(const std::filesystem::path &path);

} // namespace kiln::frontend

#endif // KILN_FRONTEND_CONFIG_H
