#include "frontend/Config.h"

#include "TestUtil.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

namespace kiln::frontend {
namespace {

using testing::errorOf;
using ::testing::HasSubstr;
using json = nlohmann::json;

const std::filesystem::path kPresets =
    std::filesystem::path(KILN_PROJECT_SOURCE_DIR) / "models" / "presets";

json preset(const std::string &name) {
  std::ifstream in(kPresets / (name + ".json"));
  std::stringstream text;
  text << in.rdbuf();
  return json::parse(text.str());
}

absl::StatusOr<ModelConfig> parse(const json &config) {
  return parseModelConfig(config.dump(), "config.json");
}

/// The preset `name` with `key` set to `value`.
json edited(const std::string &name, const std::string &key, json value) {
  json config = preset(name);
  config[key] = std::move(value);
  return config;
}

json without(const std::string &name, const std::string &key) {
  json config = preset(name);
  config.erase(key);
  return config;
}

// --- The reference configs -------------------------------------------------

TEST(ConfigPresets, DeepseekV3) {
  absl::StatusOr<ModelConfig> c =
      loadModelConfig(kPresets / "deepseek-v3.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::DeepseekV3);
  EXPECT_EQ(c->modelType, "deepseek_v3");
  EXPECT_EQ(c->hiddenSize, 7168);
  EXPECT_EQ(c->numHiddenLayers, 61);
  EXPECT_EQ(c->vocabSize, 129280);
  ASSERT_TRUE(c->mla.has_value());
  EXPECT_EQ(c->mla->qLoraRank, 1536);
  EXPECT_EQ(c->mla->kvLoraRank, 512);
  EXPECT_EQ(c->mla->qkHeadDim(), 192);
  EXPECT_EQ(c->mla->vHeadDim, 128);
  ASSERT_TRUE(c->moe.has_value());
  EXPECT_EQ(c->moe->nRoutedExperts, 256);
  EXPECT_EQ(c->moe->nSharedExperts, 1);
  EXPECT_EQ(c->moe->numExpertsPerTok, 8);
  EXPECT_EQ(c->moe->nGroup, 8);
  EXPECT_EQ(c->moe->topkGroup, 4);
  EXPECT_EQ(c->moe->firstKDenseReplace, 3);
  EXPECT_EQ(c->moe->topkMethod, TopkMethod::NoauxTc);
  EXPECT_EQ(c->moe->scoringFunc, ScoringFunc::Sigmoid);
  EXPECT_TRUE(c->moe->normTopkProb);
  EXPECT_DOUBLE_EQ(c->moe->routedScalingFactor, 2.5);
  EXPECT_EQ(c->numNextnPredictLayers, 1);
  ASSERT_TRUE(c->quantization.has_value());
  EXPECT_EQ(c->quantization->quantMethod, "fp8");
  EXPECT_EQ(c->quantization->fmt, "e4m3");
  EXPECT_EQ(c->quantization->activationScheme, "dynamic");
  EXPECT_EQ(c->quantization->weightBlockRows, 128);
  EXPECT_EQ(c->quantization->weightBlockCols, 128);
  EXPECT_EQ(c->ropeScaling.type, RopeType::Yarn);
  EXPECT_DOUBLE_EQ(c->ropeScaling.factor, 40);
  EXPECT_EQ(c->ropeScaling.originalMaxPositionEmbeddings, 4096);
  EXPECT_EQ(c->torchDtype, DType::BF16);
  EXPECT_FALSE(c->isMoeLayer(0));
  EXPECT_FALSE(c->isMoeLayer(2));
  EXPECT_TRUE(c->isMoeLayer(3));
  EXPECT_TRUE(c->isMoeLayer(60));
  EXPECT_EQ(c->sourceName, (kPresets / "deepseek-v3.json").string());
}

TEST(ConfigPresets, DeepseekV2) {
  absl::StatusOr<ModelConfig> c =
      loadModelConfig(kPresets / "deepseek-v2.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::DeepseekV2);
  EXPECT_EQ(c->mla->qLoraRank, 1536);
  EXPECT_EQ(c->moe->nRoutedExperts, 160);
  EXPECT_EQ(c->moe->topkMethod, TopkMethod::GroupLimitedGreedy);
  EXPECT_EQ(c->moe->scoringFunc, ScoringFunc::Softmax);
  EXPECT_DOUBLE_EQ(c->moe->routedScalingFactor, 16.0);
  EXPECT_DOUBLE_EQ(c->ropeScaling.mscaleAllDim, 0.707);
  EXPECT_FALSE(c->quantization.has_value());
  EXPECT_EQ(c->numNextnPredictLayers, 0);
}

TEST(ConfigPresets, DeepseekV2Lite) {
  absl::StatusOr<ModelConfig> c =
      loadModelConfig(kPresets / "deepseek-v2-lite.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::DeepseekV2);
  EXPECT_EQ(c->hiddenSize, 2048);
  EXPECT_EQ(c->mla->qLoraRank, std::nullopt);
  EXPECT_EQ(c->moe->nRoutedExperts, 64);
  EXPECT_EQ(c->moe->nSharedExperts, 2);
  EXPECT_EQ(c->moe->numExpertsPerTok, 6);
  EXPECT_EQ(c->moe->moeIntermediateSize, 1408);
  EXPECT_EQ(c->moe->topkMethod, TopkMethod::Greedy);
  EXPECT_FALSE(c->moe->normTopkProb);
  EXPECT_FALSE(c->isMoeLayer(0));
  EXPECT_TRUE(c->isMoeLayer(1));
}

TEST(ConfigPresets, LlamaDistill) {
  absl::StatusOr<ModelConfig> c =
      loadModelConfig(kPresets / "r1-distill-llama-8b.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::Llama);
  EXPECT_EQ(c->numKeyValueHeads, 8);
  EXPECT_EQ(c->headDim, 128);
  EXPECT_DOUBLE_EQ(c->rmsNormEps, 1e-5);
  EXPECT_DOUBLE_EQ(c->ropeTheta, 500000.0);
  EXPECT_EQ(c->ropeScaling.type, RopeType::Llama3);
  EXPECT_DOUBLE_EQ(c->ropeScaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->ropeScaling.lowFreqFactor, 1.0);
  EXPECT_DOUBLE_EQ(c->ropeScaling.highFreqFactor, 4.0);
  EXPECT_EQ(c->ropeScaling.originalMaxPositionEmbeddings, 8192);
  EXPECT_FALSE(c->qkvBias);
  EXPECT_FALSE(c->oBias);
  EXPECT_FALSE(c->mla.has_value());
  EXPECT_FALSE(c->moe.has_value());
  EXPECT_FALSE(c->isMoeLayer(0));
}

TEST(ConfigPresets, QwenDistill) {
  absl::StatusOr<ModelConfig> c =
      loadModelConfig(kPresets / "r1-distill-qwen-1.5b.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::Qwen2);
  EXPECT_EQ(c->numAttentionHeads, 12);
  EXPECT_EQ(c->numKeyValueHeads, 2);
  EXPECT_EQ(c->headDim, 128);
  EXPECT_TRUE(c->qkvBias);
  EXPECT_FALSE(c->oBias);
  EXPECT_EQ(c->ropeScaling.type, RopeType::Default);
  EXPECT_FALSE(c->tieWordEmbeddings);
}

TEST(ConfigPresets, EveryPresetParses) {
  int parsed = 0;
  for (const auto &entry : std::filesystem::directory_iterator(kPresets)) {
    if (entry.path().extension() != ".json")
      continue;
    absl::StatusOr<ModelConfig> c = loadModelConfig(entry.path());
    EXPECT_TRUE(c.ok()) << c.status();
    ++parsed;
  }
  EXPECT_GE(parsed, 5);
}

// transformers >= 5 writes `rope_parameters` (with rope_theta inside)
// instead of `rope_theta` + `rope_scaling`.
TEST(ConfigRope, RopeParametersOfTransformers5) {
  json llama = preset("r1-distill-llama-8b");
  llama.erase("rope_scaling");
  llama.erase("rope_theta");
  llama["rope_parameters"] = {
      {"rope_type", "llama3"},   {"rope_theta", 500000.0},
      {"factor", 8.0},           {"low_freq_factor", 1.0},
      {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  absl::StatusOr<ModelConfig> c = parse(llama);
  ASSERT_TRUE(c.ok()) << errorOf(c);
  EXPECT_EQ(c->ropeTheta, 500000.0);
  EXPECT_EQ(c->ropeScaling.type, RopeType::Llama3);
  EXPECT_EQ(c->ropeScaling.factor, 8.0);

  json qwen = preset("r1-distill-qwen-1.5b");
  qwen.erase("rope_theta");
  qwen["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  c = parse(qwen);
  ASSERT_TRUE(c.ok()) << errorOf(c);
  EXPECT_EQ(c->ropeTheta, 1e6);
  EXPECT_EQ(c->ropeScaling.type, RopeType::Default);

  qwen["rope_parameters"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  EXPECT_THAT(errorOf(parse(qwen)),
              HasSubstr("field 'rope_parameters.rope_type': unsupported rope "
                        "type 'dynamic'"));
}

TEST(ConfigRope, DeepseekInterleaveAndMscale) {
  absl::StatusOr<ModelConfig> v3 = parse(preset("deepseek-v3"));
  ASSERT_TRUE(v3.ok()) << errorOf(v3);
  EXPECT_TRUE(v3->ropeInterleave);
  EXPECT_TRUE(v3->ropeScaling.mscaleGiven);
  json plain = preset("deepseek-v3");
  plain["rope_interleave"] = false;
  plain["rope_scaling"].erase("mscale");
  absl::StatusOr<ModelConfig> c = parse(plain);
  ASSERT_TRUE(c.ok()) << errorOf(c);
  EXPECT_FALSE(c->ropeInterleave);
  EXPECT_FALSE(c->ropeScaling.mscaleGiven);
  // HF's V2 always rotates adjacent pairs.
  json v2 = preset("deepseek-v2");
  v2["rope_interleave"] = false;
  c = parse(v2);
  ASSERT_TRUE(c.ok()) << errorOf(c);
  EXPECT_TRUE(c->ropeInterleave);
  EXPECT_FALSE(parse(preset("r1-distill-llama-8b"))->ropeInterleave);
}

TEST(ConfigLoad, DirectoryReadsConfigJson) {
  std::filesystem::path dir = testing::freshTempDir();
  std::filesystem::copy_file(kPresets / "deepseek-v2-lite.json",
                             dir / "config.json");
  absl::StatusOr<ModelConfig> c = loadModelConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sourceName, (dir / "config.json").string());
}

TEST(ConfigLoad, UnreadableFileNamesThePath) {
  std::filesystem::path dir = testing::freshTempDir();
  EXPECT_THAT(errorOf(loadModelConfig(dir / "nope.json")),
              HasSubstr((dir / "nope.json").string()));
  EXPECT_THAT(errorOf(loadModelConfig(dir)),
              HasSubstr((dir / "config.json").string()));
}

TEST(ConfigDefaults, MinimalLlamaGetsHfDefaults) {
  json config = {{"architectures", {"LlamaForCausalLM"}},
                 {"hidden_size", 256},
                 {"intermediate_size", 512},
                 {"num_hidden_layers", 2},
                 {"num_attention_heads", 4},
                 {"vocab_size", 1000},
                 {"max_position_embeddings", 128}};
  absl::StatusOr<ModelConfig> c = parse(config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->modelType, "llama");
  EXPECT_EQ(c->numKeyValueHeads, 4);
  EXPECT_EQ(c->headDim, 64);
  EXPECT_DOUBLE_EQ(c->ropeTheta, 10000.0);
  EXPECT_DOUBLE_EQ(c->initializerRange, 0.02);
  EXPECT_EQ(c->torchDtype, DType::BF16);
  EXPECT_FALSE(c->tieWordEmbeddings);
  EXPECT_FALSE(c->qkvBias);
  EXPECT_FALSE(c->mlpBias);
  EXPECT_EQ(c->ropeScaling.type, RopeType::Default);
}

TEST(ConfigDefaults, DeepseekMoeDefaults) {
  json config = preset("deepseek-v2-lite");
  for (const char *key :
       {"moe_layer_freq", "first_k_dense_replace", "n_group", "topk_group",
        "norm_topk_prob", "routed_scaling_factor", "scoring_func",
        "topk_method"})
    config.erase(key);
  absl::StatusOr<ModelConfig> c = parse(config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe->moeLayerFreq, 1);
  EXPECT_EQ(c->moe->firstKDenseReplace, 0);
  EXPECT_EQ(c->moe->nGroup, 1);
  EXPECT_EQ(c->moe->topkGroup, 1);
  EXPECT_FALSE(c->moe->normTopkProb);
  EXPECT_DOUBLE_EQ(c->moe->routedScalingFactor, 1.0);
  EXPECT_EQ(c->moe->scoringFunc, ScoringFunc::Softmax);
  EXPECT_EQ(c->moe->topkMethod, TopkMethod::Greedy);
  EXPECT_TRUE(c->isMoeLayer(0));
}

TEST(ConfigDefaults, DeepseekWithoutExpertsIsDense) {
  json config = edited("deepseek-v2-lite", "n_routed_experts", nullptr);
  absl::StatusOr<ModelConfig> c = parse(config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->moe.has_value());
  EXPECT_FALSE(c->isMoeLayer(5));
}

TEST(ConfigDefaults, MoeLayerFrequency) {
  json config = edited("deepseek-v2-lite", "moe_layer_freq", 2);
  absl::StatusOr<ModelConfig> c = parse(config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->isMoeLayer(1));
  EXPECT_TRUE(c->isMoeLayer(2));
  EXPECT_FALSE(c->isMoeLayer(3));
}

TEST(ConfigValues, IntegralFloatIsAnInteger) {
  absl::StatusOr<ModelConfig> c =
      parse(edited("r1-distill-llama-8b", "hidden_size", 4096.0));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hiddenSize, 4096);
}

TEST(ConfigValues, LlamaAttentionBiasSetsBothBiases) {
  absl::StatusOr<ModelConfig> c =
      parse(edited("r1-distill-llama-8b", "attention_bias", true));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkvBias);
  EXPECT_TRUE(c->oBias);
}

TEST(ConfigValues, LlamaHeadDimNeedNotDivideHidden) {
  absl::StatusOr<ModelConfig> c =
      parse(edited("r1-distill-llama-8b", "head_dim", 64));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->headDim, 64);
}

TEST(ConfigValues, TorchDtypes) {
  absl::StatusOr<ModelConfig> c =
      parse(edited("r1-distill-llama-8b", "torch_dtype", "float32"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->torchDtype, DType::F32);
  c = parse(edited("r1-distill-llama-8b", "torch_dtype", "float16"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->torchDtype, DType::F16);
}

TEST(ConfigValues, RopeScalingDefaultAndNull) {
  json config =
      edited("r1-distill-llama-8b", "rope_scaling", {{"rope_type", "default"}});
  absl::StatusOr<ModelConfig> c = parse(config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ropeScaling.type, RopeType::Default);
  c = parse(edited("r1-distill-llama-8b", "rope_scaling", nullptr));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ropeScaling.type, RopeType::Default);
}

TEST(ConfigNames, RoundTripNames) {
  EXPECT_EQ(architectureName(Architecture::DeepseekV3),
            "DeepseekV3ForCausalLM");
  EXPECT_EQ(architectureName(Architecture::Qwen2), "Qwen2ForCausalLM");
  EXPECT_EQ(scoringFuncName(ScoringFunc::Sigmoid), "sigmoid");
  EXPECT_EQ(topkMethodName(TopkMethod::GroupLimitedGreedy),
            "group_limited_greedy");
}

// --- Bad input ---------------------------------------------------------------

TEST(ConfigErrors, MissingKey) {
  EXPECT_THAT(errorOf(parse(without("r1-distill-llama-8b", "hidden_size"))),
              HasSubstr("config.json: field 'hidden_size': missing"));
}

TEST(ConfigErrors, MissingMlaKey) {
  EXPECT_THAT(errorOf(parse(without("deepseek-v2-lite", "q_lora_rank"))),
              HasSubstr("config.json: field 'q_lora_rank': missing"));
}

TEST(ConfigErrors, IllTypedKey) {
  EXPECT_THAT(
      errorOf(parse(edited("r1-distill-llama-8b", "hidden_size", "abc"))),
      HasSubstr("config.json: field 'hidden_size': expected a positive "
                "integer, got \"abc\""));
}

TEST(ConfigErrors, BooleanIsNotAnInteger) {
  EXPECT_THAT(
      errorOf(parse(edited("r1-distill-llama-8b", "num_hidden_layers", true))),
      HasSubstr("field 'num_hidden_layers': expected a positive integer, got "
                "true"));
}

TEST(ConfigErrors, FractionalIntegerRejected) {
  EXPECT_THAT(
      errorOf(parse(edited("r1-distill-llama-8b", "vocab_size", 1000.5))),
      HasSubstr("field 'vocab_size': expected a positive integer, got 1000.5"));
}

TEST(ConfigErrors, NonPositiveSize) {
  EXPECT_THAT(
      errorOf(parse(edited("r1-distill-llama-8b", "intermediate_size", 0))),
      HasSubstr("field 'intermediate_size': expected a positive integer, got "
                "0"));
}

TEST(ConfigErrors, HugeSizeRejected) {
  EXPECT_THAT(errorOf(parse(edited("r1-distill-llama-8b", "hidden_size",
                                   int64_t{1} << 40))),
              HasSubstr("field 'hidden_size': 1099511627776 exceeds the "
                        "largest supported size (16777216)"));
}

TEST(ConfigErrors, TooManyLayersRejected) {
  EXPECT_THAT(errorOf(parse(edited("r1-distill-llama-8b", "num_hidden_layers",
                                   10000000))),
              HasSubstr("field 'num_hidden_layers': 10000000 exceeds the "
                        "supported maximum (1024)"));
}

TEST(ConfigErrors, TooManyExpertsRejected) {
  json config = edited("deepseek-v3", "n_routed_experts", 8192);
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("field 'n_routed_experts': 8192 exceeds the supported "
                        "maximum (4096)"));
}

TEST(ConfigErrors, ParameterCountOverflowRejected) {
  json config = preset("deepseek-v3");
  config["hidden_size"] = 1 << 24;
  config["moe_intermediate_size"] = 1 << 24;
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("more than the supported 1.1e15"));
}

TEST(ConfigErrors, IllTypedBoolean) {
  EXPECT_THAT(errorOf(parse(
                  edited("r1-distill-llama-8b", "tie_word_embeddings", "yes"))),
              HasSubstr("field 'tie_word_embeddings': expected true or false, "
                        "got \"yes\""));
}

TEST(ConfigErrors, UnknownArchitecture) {
  EXPECT_THAT(errorOf(parse(edited("r1-distill-llama-8b", "architectures",
                                   {"GPT2LMHeadModel"}))),
              HasSubstr("config.json: field 'architectures': unknown "
                        "architecture 'GPT2LMHeadModel' (supported: "
                        "DeepseekV2ForCausalLM, DeepseekV3ForCausalLM, "
                        "Qwen2ForCausalLM, LlamaForCausalLM)"));
}

TEST(ConfigErrors, ArchitecturesMustBeNonEmptyStrings) {
  EXPECT_THAT(errorOf(parse(edited("r1-distill-llama-8b", "architectures",
                                   json::array()))),
              HasSubstr("field 'architectures': expected a non-empty array of "
                        "strings, got []"));
  EXPECT_THAT(errorOf(parse(edited("r1-distill-llama-8b", "architectures",
                                   "LlamaForCausalLM"))),
              HasSubstr("field 'architectures': expected a non-empty array"));
}

TEST(ConfigErrors, MalformedJson) {
  std::string message =
      errorOf(parseModelConfig("{\"hidden_size\": }", "bad.json"));
  EXPECT_THAT(message, HasSubstr("bad.json: malformed JSON at byte 17"));
}

TEST(ConfigErrors, TopLevelNotAnObject) {
  EXPECT_THAT(errorOf(parseModelConfig("[1, 2]", "config.json")),
              HasSubstr("config.json: expected a JSON object at the top "
                        "level, got [1,2]"));
}

TEST(ConfigErrors, KeyValueHeadsMustDivideHeads) {
  EXPECT_THAT(
      errorOf(parse(edited("r1-distill-llama-8b", "num_key_value_heads", 5))),
      HasSubstr("field 'num_key_value_heads': 5 does not divide "
                "num_attention_heads (32)"));
}

TEST(ConfigErrors, HeadDimMustBeEven) {
  EXPECT_THAT(errorOf(parse(edited("r1-distill-llama-8b", "head_dim", 127))),
              HasSubstr("field 'head_dim': 127 must be even"));
}

TEST(ConfigErrors, DefaultHeadDimNeedsDivisibleHidden) {
  json config = edited("r1-distill-llama-8b", "hidden_size", 4000);
  config["num_attention_heads"] = 48;
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("field 'head_dim': missing, and hidden_size (4000) is "
                        "not a multiple of num_attention_heads (48)"));
}

TEST(ConfigErrors, MlaRopeHeadDimMustBeEven) {
  EXPECT_THAT(errorOf(parse(edited("deepseek-v3", "qk_rope_head_dim", 63))),
              HasSubstr("field 'qk_rope_head_dim': 63 must be even"));
}

TEST(ConfigErrors, GroupsMustDivideExperts) {
  EXPECT_THAT(errorOf(parse(edited("deepseek-v3", "n_group", 3))),
              HasSubstr("config.json: field 'n_group': 3 does not divide "
                        "n_routed_experts (256)"));
}

TEST(ConfigErrors, TopkGroupAtMostGroups) {
  EXPECT_THAT(errorOf(parse(edited("deepseek-v3", "topk_group", 9))),
              HasSubstr("field 'topk_group': 9 exceeds n_group (8)"));
}

TEST(ConfigErrors, ExpertsPerTokenAtMostExperts) {
  EXPECT_THAT(
      errorOf(parse(edited("deepseek-v2-lite", "num_experts_per_tok", 65))),
      HasSubstr("field 'num_experts_per_tok': 65 exceeds n_routed_experts "
                "(64)"));
}

TEST(ConfigErrors, ExpertsPerTokenWithinSelectedGroups) {
  // 8 groups of 32 experts, 1 group selected: at most 32 experts per token.
  json config = edited("deepseek-v3", "topk_group", 1);
  config["num_experts_per_tok"] = 33;
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("field 'num_experts_per_tok': 33 exceeds the 32 "
                        "experts in topk_group (1) groups of 32"));
}

TEST(ConfigErrors, NoauxTcNeedsSigmoid) {
  EXPECT_THAT(errorOf(parse(edited("deepseek-v3", "scoring_func", "softmax"))),
              HasSubstr("field 'scoring_func': topk_method 'noaux_tc' requires "
                        "\"sigmoid\", got \"softmax\""));
}

TEST(ConfigErrors, UnknownTopkMethod) {
  EXPECT_THAT(errorOf(parse(edited("deepseek-v3", "topk_method", "best"))),
              HasSubstr("field 'topk_method': expected one of \"greedy\", "
                        "\"group_limited_greedy\", \"noaux_tc\", got "
                        "\"best\""));
}

TEST(ConfigErrors, RmsNormEpsPositive) {
  EXPECT_THAT(errorOf(parse(edited("deepseek-v3", "rms_norm_eps", 0))),
              HasSubstr("field 'rms_norm_eps': expected a positive number, "
                        "got 0"));
}

TEST(ConfigErrors, YarnFactorAtLeastOne) {
  json config = preset("deepseek-v3");
  config["rope_scaling"]["factor"] = 0.5;
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("field 'rope_scaling.factor': 0.5 must be at least 1 "
                        "for yarn"));
}

TEST(ConfigErrors, YarnNeedsOriginalLength) {
  json config = preset("deepseek-v3");
  config["rope_scaling"].erase("original_max_position_embeddings");
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("field 'rope_scaling.original_max_position_"
                        "embeddings': missing"));
}

TEST(ConfigErrors, Llama3FrequencyFactorsOrdered) {
  json config = preset("r1-distill-llama-8b");
  config["rope_scaling"]["low_freq_factor"] = 4.0;
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("field 'rope_scaling.low_freq_factor': 4 must be "
                        "below high_freq_factor (4)"));
}

TEST(ConfigErrors, UnsupportedRopeType) {
  json config = edited("r1-distill-llama-8b", "rope_scaling",
                       {{"rope_type", "linear"}, {"factor", 2.0}});
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("config.json: field 'rope_scaling.rope_type': "
                        "unsupported rope type 'linear' (supported: default, "
                        "yarn, llama3)"));
}

TEST(ConfigErrors, RopeScalingMustBeObject) {
  EXPECT_THAT(errorOf(parse(edited("r1-distill-llama-8b", "rope_scaling", 2))),
              HasSubstr("field 'rope_scaling': expected an object or null, "
                        "got 2"));
}

TEST(ConfigErrors, QwenSlidingWindowUnsupported) {
  EXPECT_THAT(errorOf(parse(
                  edited("r1-distill-qwen-1.5b", "use_sliding_window", true))),
              HasSubstr("field 'use_sliding_window': sliding-window attention "
                        "is not supported"));
}

TEST(ConfigErrors, UnknownTorchDtype) {
  EXPECT_THAT(
      errorOf(parse(edited("r1-distill-llama-8b", "torch_dtype", "int8"))),
      HasSubstr("field 'torch_dtype': expected one of \"bfloat16\", "
                "\"float32\", \"float16\", got \"int8\""));
}

TEST(ConfigErrors, UnsupportedQuantMethod) {
  json config = preset("deepseek-v3");
  config["quantization_config"]["quant_method"] = "gptq";
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("field 'quantization_config.quant_method': "
                        "unsupported value \"gptq\" (supported: \"fp8\")"));
}

TEST(ConfigErrors, BadWeightBlockSize) {
  json config = preset("deepseek-v3");
  config["quantization_config"]["weight_block_size"] = {128, 0};
  EXPECT_THAT(errorOf(parse(config)),
              HasSubstr("field 'quantization_config.weight_block_size': "
                        "expected [rows, cols] of positive integers, got "
                        "[128,0]"));
}

} // namespace
} // namespace kiln::frontend
