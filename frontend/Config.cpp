#include "frontend/Config.h"

#include "frontend/Support.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <span>
#include <utility>
#include <vector>

namespace kiln::frontend {

namespace {

using json = nlohmann::json;

template <typename E> struct Choice {
  std::string_view name;
  E value;
};

constexpr Choice<Architecture> kArchitectures[] = {
    {"DeepseekV2ForCausalLM", Architecture::DeepseekV2},
    {"DeepseekV3ForCausalLM", Architecture::DeepseekV3},
    {"Qwen2ForCausalLM", Architecture::Qwen2},
    {"LlamaForCausalLM", Architecture::Llama},
};

constexpr Choice<ScoringFunc> kScoringFuncs[] = {
    {"softmax", ScoringFunc::Softmax},
    {"sigmoid", ScoringFunc::Sigmoid},
};

constexpr Choice<TopkMethod> kTopkMethods[] = {
    {"greedy", TopkMethod::Greedy},
    {"group_limited_greedy", TopkMethod::GroupLimitedGreedy},
    {"noaux_tc", TopkMethod::NoauxTc},
};

constexpr Choice<DType> kTorchDtypes[] = {
    {"bfloat16", DType::BF16},
    {"float32", DType::F32},
    {"float16", DType::F16},
};

constexpr Choice<RopeType> kRopeTypes[] = {
    {"default", RopeType::Default},
    {"yarn", RopeType::Yarn},
    {"llama3", RopeType::Llama3},
};

template <typename E>
std::string_view nameOf(std::span<const Choice<E>> choices, E value) {
  for (const Choice<E> &c : choices)
    if (c.value == value)
      return c.name;
  return "?";
}

template <typename E>
std::string listChoices(std::span<const Choice<E>> choices,
                        std::string_view quote) {
  return absl::StrJoin(choices, ", ",
                       [&](std::string *out, const Choice<E> &c) {
                         detail::strAppend(out, quote, c.name, quote);
                       });
}

/// Integers may be written as integral floats (4096.0), as some exporters
/// do; booleans are never integers.
std::optional<int64_t> asInt(const json &value) {
  if (value.is_number_unsigned()) {
    uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX))
      return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (value.is_number_integer())
    return value.get<int64_t>();
  if (value.is_number_float()) {
    double d = value.get<double>();
    // 2^63 is exactly representable; anything at or above it overflows.
    if (std::isfinite(d) && std::trunc(d) == d && d >= -0x1p63 && d < 0x1p63)
      return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

/// No dimension of a real model comes near this; larger values would only
/// overflow shape arithmetic downstream.
constexpr int64_t kMaxSize = int64_t{1} << 24;

/// Reads fields of one JSON object, remembering only the first error so that
/// the parser reads straight through and reports where it first went wrong.
class Reader {
public:
  Reader(const json &object, std::string_view source, absl::Status &status,
         std::string prefix = "")
      : object_(object), source_(source), status_(status),
        prefix_(std::move(prefix)) {}

  bool ok() const { return status_.ok(); }

  void fail(std::string_view key, std::string_view message) {
    if (ok())
      status_ = absl::InvalidArgumentError(
          detail::strCat(source_, ": field '", prefix_, key, "': ", message));
  }

  /// The value of `key`; nullptr when absent.
  const json *find(std::string_view key) const {
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }

  /// Like find, but a null value counts as absent: HF writes None for
  /// "use the default".
  const json *findSet(std::string_view key) const {
    const json *value = find(key);
    return value && !value->is_null() ? value : nullptr;
  }

  const json *require(std::string_view key) {
    const json *value = find(key);
    if (!value)
      fail(key, "missing");
    return value;
  }

  Reader nested(std::string_view key, const json &object) {
    return Reader(object, source_, status_, detail::strCat(prefix_, key, "."));
  }

  int64_t positiveInt(std::string_view key) {
    const json *value = require(key);
    return value ? toInt(key, *value, 1, "a positive integer") : 0;
  }
  int64_t positiveInt(std::string_view key, int64_t fallback) {
    const json *value = findSet(key);
    return value ? toInt(key, *value, 1, "a positive integer") : fallback;
  }
  int64_t nonNegativeInt(std::string_view key, int64_t fallback) {
    const json *value = findSet(key);
    return value ? toInt(key, *value, 0, "a non-negative integer") : fallback;
  }
  /// A required key whose null means "absent" (DeepSeek's q_lora_rank).
  std::optional<int64_t> nullablePositiveInt(std::string_view key) {
    const json *value = require(key);
    if (!value || value->is_null())
      return std::nullopt;
    return toInt(key, *value, 1, "a positive integer or null");
  }

  double positiveNumber(std::string_view key, double fallback) {
    const json *value = findSet(key);
    return value ? toNumber(key, *value, /*allowZero=*/false) : fallback;
  }
  double positiveNumber(std::string_view key) {
    const json *value = require(key);
    return value ? toNumber(key, *value, /*allowZero=*/false) : 0.0;
  }
  double nonNegativeNumber(std::string_view key, double fallback) {
    const json *value = findSet(key);
    return value ? toNumber(key, *value, /*allowZero=*/true) : fallback;
  }

  bool boolean(std::string_view key, bool fallback) {
    const json *value = findSet(key);
    if (!value)
      return fallback;
    if (!value->is_boolean()) {
      fail(key, detail::strCat("expected true or false, got ",
                               detail::describeJson(*value)));
      return fallback;
    }
    return value->get<bool>();
  }

  std::string string(std::string_view key) {
    const json *value = require(key);
    return value ? toString(key, *value) : "";
  }
  std::string string(std::string_view key, std::string_view fallback) {
    const json *value = findSet(key);
    return value ? toString(key, *value) : std::string(fallback);
  }

  template <typename E>
  E choice(std::string_view key, std::span<const Choice<E>> choices,
           E fallback) {
    const json *value = findSet(key);
    return value ? toChoice(key, *value, choices, fallback) : fallback;
  }

private:
  int64_t toInt(std::string_view key, const json &value, int64_t min,
                std::string_view expected) {
    std::optional<int64_t> i = asInt(value);
    if (!i || *i < min) {
      fail(key, detail::strCat("expected ", expected, ", got ",
                               detail::describeJson(value)));
      return min;
    }
    if (*i > kMaxSize) {
      fail(key, detail::strCat(*i, " exceeds the largest supported size (",
                               kMaxSize, ")"));
      return min;
    }
    return *i;
  }

  double toNumber(std::string_view key, const json &value, bool allowZero) {
    if (value.is_number()) {
      double d = value.get<double>();
      if (d > 0 || (allowZero && d == 0))
        return d;
    }
    fail(key,
         detail::strCat("expected a ", allowZero ? "non-negative" : "positive",
                        " number, got ", detail::describeJson(value)));
    return 1.0;
  }

  std::string toString(std::string_view key, const json &value) {
    if (value.is_string())
      return value.get<std::string>();
    fail(key, detail::strCat("expected a string, got ",
                             detail::describeJson(value)));
    return "";
  }

  template <typename E>
  E toChoice(std::string_view key, const json &value,
             std::span<const Choice<E>> choices, E fallback) {
    if (value.is_string())
      for (const Choice<E> &c : choices)
        if (c.name == value.get_ref<const std::string &>())
          return c.value;
    fail(key, detail::strCat("expected one of ", listChoices(choices, "\""),
                             ", got ", detail::describeJson(value)));
    return fallback;
  }

  const json &object_;
  std::string_view source_;
  absl::Status &status_;
  std::string prefix_;
};

bool isDeepseek(Architecture arch) {
  return arch == Architecture::DeepseekV2 || arch == Architecture::DeepseekV3;
}

std::string_view defaultModelType(Architecture arch) {
  switch (arch) {
  case Architecture::DeepseekV2:
    return "deepseek_v2";
  case Architecture::DeepseekV3:
    return "deepseek_v3";
  case Architecture::Qwen2:
    return "qwen2";
  case Architecture::Llama:
    return "llama";
  }
  return "";
}

Architecture readArchitecture(Reader &r) {
  const json *value = r.require("architectures");
  if (!value)
    return Architecture::Llama;
  if (!value->is_array() || value->empty() || !(*value)[0].is_string()) {
    r.fail("architectures", detail::strCat("expected a non-empty array of "
                                           "strings, got ",
                                           detail::describeJson(*value)));
    return Architecture::Llama;
  }
  const auto &name = (*value)[0].get_ref<const std::string &>();
  for (const Choice<Architecture> &c : kArchitectures)
    if (c.name == name)
      return c.value;
  r.fail("architectures",
         detail::strCat("unknown architecture '", name, "' (supported: ",
                        listChoices<Architecture>(kArchitectures, ""), ")"));
  return Architecture::Llama;
}

RopeScaling readYarn(Reader &r) {
  RopeScaling s;
  s.type = RopeType::Yarn;
  s.factor = r.positiveNumber("factor");
  s.originalMaxPositionEmbeddings =
      r.positiveInt("original_max_position_embeddings");
  s.betaFast = r.positiveNumber("beta_fast", s.betaFast);
  s.betaSlow = r.positiveNumber("beta_slow", s.betaSlow);
  s.mscaleGiven = r.findSet("mscale") != nullptr;
  s.mscale = r.positiveNumber("mscale", s.mscale);
  s.mscaleAllDim = r.nonNegativeNumber("mscale_all_dim", s.mscaleAllDim);
  if (r.ok() && s.factor < 1)
    r.fail("factor",
           absl::StrFormat("%g must be at least 1 for yarn", s.factor));
  return s;
}

RopeScaling readLlama3(Reader &r) {
  RopeScaling s;
  s.type = RopeType::Llama3;
  s.factor = r.positiveNumber("factor");
  s.lowFreqFactor = r.positiveNumber("low_freq_factor");
  s.highFreqFactor = r.positiveNumber("high_freq_factor");
  s.originalMaxPositionEmbeddings =
      r.positiveInt("original_max_position_embeddings");
  if (r.ok() && s.lowFreqFactor >= s.highFreqFactor)
    r.fail("low_freq_factor",
           absl::StrFormat("%g must be below high_freq_factor (%g)",
                           s.lowFreqFactor, s.highFreqFactor));
  return s;
}

/// The scheme described by one rope object (`rope_scaling` or
/// `rope_parameters`); a missing type means the default scheme.
RopeScaling readRopeObject(Reader &r) {
  // Newer HF configs say `rope_type`; older ones (DeepSeek) say `type`.
  std::string_view typeKey = r.find("rope_type") ? "rope_type" : "type";
  std::string type = r.string(typeKey, "default");
  if (!r.ok())
    return {};
  for (const Choice<RopeType> &c : kRopeTypes) {
    if (c.name != type)
      continue;
    switch (c.value) {
    case RopeType::Default:
      return {};
    case RopeType::Yarn:
      return readYarn(r);
    case RopeType::Llama3:
      return readLlama3(r);
    }
  }
  r.fail(typeKey,
         detail::strCat("unsupported rope type '", type, "' (supported: ",
                        listChoices<RopeType>(kRopeTypes, ""), ")"));
  return {};
}

/// transformers >= 5 writes `rope_parameters` (which also holds
/// `rope_theta`); older configs have top-level `rope_theta` and
/// `rope_scaling`.
void readRope(Reader &parent, ModelConfig &c) {
  std::string_view key =
      parent.findSet("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const json *value = parent.findSet(key);
  if (key == "rope_scaling")
    c.ropeTheta = parent.positiveNumber("rope_theta", 10000.0);
  if (!value)
    return;
  if (!value->is_object()) {
    parent.fail(key, detail::strCat("expected an object or null, got ",
                                    detail::describeJson(*value)));
    return;
  }
  Reader r = parent.nested(key, *value);
  if (key == "rope_parameters")
    c.ropeTheta = r.positiveNumber("rope_theta", 10000.0);
  c.ropeScaling = readRopeObject(r);
}

MlaConfig readMla(Reader &r) {
  MlaConfig mla;
  mla.qLoraRank = r.nullablePositiveInt("q_lora_rank");
  mla.kvLoraRank = r.positiveInt("kv_lora_rank");
  mla.qkNopeHeadDim = r.positiveInt("qk_nope_head_dim");
  mla.qkRopeHeadDim = r.positiveInt("qk_rope_head_dim");
  mla.vHeadDim = r.positiveInt("v_head_dim");
  if (r.ok() && mla.qkRopeHeadDim % 2 != 0)
    r.fail("qk_rope_head_dim",
           absl::StrFormat("%d must be even for rotary embeddings",
                           mla.qkRopeHeadDim));
  return mla;
}

void checkMoe(Reader &r, const MoeConfig &moe) {
  if (moe.nRoutedExperts % moe.nGroup != 0)
    return r.fail("n_group", absl::StrFormat("%d does not divide "
                                             "n_routed_experts (%d)",
                                             moe.nGroup, moe.nRoutedExperts));
  if (moe.topkGroup > moe.nGroup)
    return r.fail("topk_group", absl::StrFormat("%d exceeds n_group (%d)",
                                                moe.topkGroup, moe.nGroup));
  if (moe.numExpertsPerTok > moe.nRoutedExperts)
    return r.fail("num_experts_per_tok",
                  absl::StrFormat("%d exceeds n_routed_experts (%d)",
                                  moe.numExpertsPerTok, moe.nRoutedExperts));
  int64_t groupSize = moe.nRoutedExperts / moe.nGroup;
  if (moe.topkMethod != TopkMethod::Greedy &&
      moe.numExpertsPerTok > moe.topkGroup * groupSize)
    return r.fail(
        "num_experts_per_tok",
        absl::StrFormat("%d exceeds the %d experts in topk_group (%d) "
                        "groups of %d for topk_method '%s'",
                        moe.numExpertsPerTok, moe.topkGroup * groupSize,
                        moe.topkGroup, groupSize,
                        topkMethodName(moe.topkMethod)));
  if (moe.topkMethod == TopkMethod::NoauxTc &&
      moe.scoringFunc != ScoringFunc::Sigmoid)
    return r.fail("scoring_func",
                  detail::strCat("topk_method 'noaux_tc' requires \"sigmoid\", "
                                 "got \"",
                                 scoringFuncName(moe.scoringFunc), "\""));
}

MoeConfig readMoe(Reader &r) {
  MoeConfig moe;
  moe.nRoutedExperts = r.positiveInt("n_routed_experts");
  moe.nSharedExperts = r.nonNegativeInt("n_shared_experts", 0);
  moe.numExpertsPerTok = r.positiveInt("num_experts_per_tok");
  moe.moeIntermediateSize = r.positiveInt("moe_intermediate_size");
  moe.firstKDenseReplace = r.nonNegativeInt("first_k_dense_replace", 0);
  moe.moeLayerFreq = r.positiveInt("moe_layer_freq", 1);
  moe.nGroup = r.positiveInt("n_group", 1);
  moe.topkGroup = r.positiveInt("topk_group", 1);
  moe.topkMethod =
      r.choice<TopkMethod>("topk_method", kTopkMethods, TopkMethod::Greedy);
  moe.scoringFunc = r.choice<ScoringFunc>("scoring_func", kScoringFuncs,
                                          ScoringFunc::Softmax);
  moe.normTopkProb = r.boolean("norm_topk_prob", false);
  moe.routedScalingFactor = r.positiveNumber("routed_scaling_factor", 1.0);
  if (r.ok())
    checkMoe(r, moe);
  return moe;
}

std::optional<QuantizationConfig> readQuantization(Reader &parent) {
  const json *value = parent.findSet("quantization_config");
  if (!value)
    return std::nullopt;
  if (!value->is_object()) {
    parent.fail("quantization_config",
                detail::strCat("expected an object, got ",
                               detail::describeJson(*value)));
    return std::nullopt;
  }
  Reader r = parent.nested("quantization_config", *value);
  QuantizationConfig q;
  auto expectExactly = [&](std::string_view key, std::string_view wanted) {
    std::string got = r.string(key);
    if (r.ok() && got != wanted)
      r.fail(key, detail::strCat("unsupported value \"", got,
                                 "\" (supported: \"", wanted, "\")"));
    return got;
  };
  q.quantMethod = expectExactly("quant_method", "fp8");
  q.fmt = expectExactly("fmt", "e4m3");
  q.activationScheme = expectExactly("activation_scheme", "dynamic");
  if (r.findSet("scale_fmt")) {
    std::string fmt = r.string("scale_fmt");
    if (r.ok() && fmt != "ue8m0" && fmt != "float32")
      r.fail("scale_fmt", detail::strCat("unsupported value \"", fmt,
                                         "\" (supported: \"ue8m0\", "
                                         "\"float32\")"));
    q.ue8m0Scales = fmt == "ue8m0";
  }
  const json *block = r.require("weight_block_size");
  if (!r.ok())
    return q;
  std::optional<int64_t> rows, cols;
  if (block->is_array() && block->size() == 2) {
    rows = asInt((*block)[0]);
    cols = asInt((*block)[1]);
  }
  if (!rows || !cols || *rows <= 0 || *cols <= 0) {
    r.fail("weight_block_size",
           detail::strCat("expected [rows, cols] of positive integers, got ",
                          detail::describeJson(*block)));
    return q;
  }
  q.weightBlockRows = *rows;
  q.weightBlockCols = *cols;
  return q;
}

void readAttention(Reader &r, ModelConfig &c) {
  c.numAttentionHeads = r.positiveInt("num_attention_heads");
  c.numKeyValueHeads =
      r.positiveInt("num_key_value_heads", c.numAttentionHeads);
  if (!r.ok())
    return;
  if (c.numAttentionHeads % c.numKeyValueHeads != 0)
    return r.fail("num_key_value_heads",
                  absl::StrFormat("%d does not divide num_attention_heads (%d)",
                                  c.numKeyValueHeads, c.numAttentionHeads));
  if (isDeepseek(c.architecture))
    return;
  if (!r.findSet("head_dim") && c.hiddenSize % c.numAttentionHeads != 0)
    return r.fail("head_dim",
                  absl::StrFormat("missing, and hidden_size (%d) is not a "
                                  "multiple of num_attention_heads (%d)",
                                  c.hiddenSize, c.numAttentionHeads));
  c.headDim = r.positiveInt("head_dim", c.hiddenSize / c.numAttentionHeads);
  if (r.ok() && c.headDim % 2 != 0)
    r.fail("head_dim",
           absl::StrFormat("%d must be even for rotary embeddings", c.headDim));
}

void readBiases(Reader &r, ModelConfig &c) {
  c.mlpBias = r.boolean("mlp_bias", false);
  if (c.architecture == Architecture::Qwen2) {
    // Qwen2 hard-codes bias on q/k/v and none on o_proj.
    c.qkvBias = true;
    c.oBias = false;
    if (r.boolean("use_sliding_window", false))
      r.fail("use_sliding_window", "sliding-window attention is not supported");
    return;
  }
  c.qkvBias = c.oBias = r.boolean("attention_bias", false);
}

void readDeepseek(Reader &r, ModelConfig &c) {
  c.mla = readMla(r);
  if (r.ok())
    c.headDim = c.mla->qkHeadDim();
  if (r.findSet("n_routed_experts"))
    c.moe = readMoe(r);
  c.numNextnPredictLayers = r.nonNegativeInt("num_nextn_predict_layers", 0);
  // HF's V2 always rotates adjacent pairs; V3 follows `rope_interleave`.
  c.ropeInterleave = c.architecture == Architecture::DeepseekV2 ||
                     r.boolean("rope_interleave", true);
}

/// Bounds the model's size so that every tensor's and the total parameter
/// count fit comfortably in 64 bits (DeepSeek-V3 has 6.9e11 parameters).
void checkScale(Reader &r, const ModelConfig &c) {
  constexpr int64_t kMaxLayers = 1024, kMaxExperts = 4096, kMaxMtp = 8;
  if (c.numHiddenLayers > kMaxLayers)
    return r.fail("num_hidden_layers",
                  absl::StrFormat("%d exceeds the supported maximum (%d)",
                                  c.numHiddenLayers, kMaxLayers));
  if (c.numNextnPredictLayers > kMaxMtp)
    return r.fail("num_nextn_predict_layers",
                  absl::StrFormat("%d exceeds the supported maximum (%d)",
                                  c.numNextnPredictLayers, kMaxMtp));
  if (c.moe && c.moe->nRoutedExperts > kMaxExperts)
    return r.fail("n_routed_experts",
                  absl::StrFormat("%d exceeds the supported maximum (%d)",
                                  c.moe->nRoutedExperts, kMaxExperts));
  // A generous upper bound of the parameter count, in double precision.
  double d = static_cast<double>(c.hiddenSize);
  double attention = 4.0 * d * static_cast<double>(c.numAttentionHeads) *
                     static_cast<double>(std::max<int64_t>(c.headDim, 512));
  double ffn = 3.0 * d * static_cast<double>(c.intermediateSize);
  if (c.moe)
    ffn += 3.0 * d * static_cast<double>(c.moe->moeIntermediateSize) *
           static_cast<double>(c.moe->nRoutedExperts + c.moe->nSharedExperts);
  double layers =
      static_cast<double>(c.numHiddenLayers + c.numNextnPredictLayers);
  double total =
      layers * (attention + ffn) + 4.0 * d * static_cast<double>(c.vocabSize);
  if (total > 0x1p50)
    r.fail("hidden_size",
           absl::StrFormat("the model would have about %.3g parameters, "
                           "more than the supported 1.1e15",
                           total));
}

ModelConfig readConfig(Reader &r, std::string_view sourceName) {
  ModelConfig c;
  c.sourceName = std::string(sourceName);
  c.architecture = readArchitecture(r);
  c.modelType = r.string("model_type", defaultModelType(c.architecture));
  c.hiddenSize = r.positiveInt("hidden_size");
  c.intermediateSize = r.positiveInt("intermediate_size");
  c.numHiddenLayers = r.positiveInt("num_hidden_layers");
  c.vocabSize = r.positiveInt("vocab_size");
  c.maxPositionEmbeddings = r.positiveInt("max_position_embeddings");
  readAttention(r, c);
  c.rmsNormEps = r.positiveNumber("rms_norm_eps", c.rmsNormEps);
  readRope(r, c);
  c.tieWordEmbeddings = r.boolean("tie_word_embeddings", false);
  readBiases(r, c);
  c.initializerRange = r.nonNegativeNumber("initializer_range", 0.02);
  // Newer transformers write `dtype` instead of `torch_dtype`.
  std::string_view dtypeKey =
      !r.findSet("torch_dtype") && r.findSet("dtype") ? "dtype" : "torch_dtype";
  c.torchDtype = r.choice<DType>(dtypeKey, kTorchDtypes, DType::BF16);
  if (isDeepseek(c.architecture))
    readDeepseek(r, c);
  c.quantization = readQuantization(r);
  if (r.ok())
    checkScale(r, c);
  return c;
}

} // namespace

std::string_view architectureName(Architecture arch) {
  return nameOf<Architecture>(kArchitectures, arch);
}

std::string_view scoringFuncName(ScoringFunc f) {
  return nameOf<ScoringFunc>(kScoringFuncs, f);
}

std::string_view topkMethodName(TopkMethod m) {
  return nameOf<TopkMethod>(kTopkMethods, m);
}

bool ModelConfig::isMoeLayer(int64_t layer) const {
  return moe && layer >= moe->firstKDenseReplace &&
         layer % moe->moeLayerFreq == 0;
}

absl::StatusOr<ModelConfig> parseModelConfig(std::string_view text,
                                             std::string_view sourceName) {
  try {
    json root = json::parse(text);
    if (!root.is_object())
      return absl::InvalidArgumentError(
          detail::strCat(sourceName,
                         ": expected a JSON object at the top level, "
                         "got ",
                         detail::describeJson(root)));
    absl::Status status;
    Reader reader(root, sourceName, status);
    ModelConfig config = readConfig(reader, sourceName);
    if (!status.ok())
      return status;
    return config;
  } catch (const json::parse_error &e) {
    return absl::InvalidArgumentError(detail::strCat(
        sourceName, ": malformed JSON at byte ", e.byte, ": ", e.what()));
  } catch (const json::exception &e) {
    return absl::InvalidArgumentError(
        detail::strCat(sourceName, ": invalid JSON: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> loadModelConfig(const std::filesystem::path &path) {
  std::error_code ec;
  std::filesystem::path file =
      std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
  absl::StatusOr<std::string> text = detail::readFile(file);
  if (!text.ok())
    return text.status();
  return parseModelConfig(*text, file.string());
}

} // namespace kiln::frontend
