// Model builders end to end: `init-model` writes a tiny checkpoint of each
// architecture, the import reads it back, builds and verifies the graph, and
// checks every tensor. Parameter counts are compared with closed-form counts
// derived from the config (an independent reference for what the builders
// declare).
#include "frontend/Config.h"
#include "frontend/Safetensors.h"
#include "ir/KilnOps.h"
#include "models/Import.h"
#include "models/InitModel.h"
#include "models/Presets.h"
#include "tests/frontend/TestUtil.h"

#include "mlir/IR/MLIRContext.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <fstream>
#include <functional>
#include <optional>

namespace kiln::models {
namespace {

using frontend::testing::errorOf;
using frontend::testing::freshTempDir;
using ::testing::HasSubstr;

frontend::ModelConfig presetConfig(const std::string &name) {
  absl::StatusOr<frontend::ModelConfig> config =
      frontend::parseModelConfig(*findPreset(name), name);
  EXPECT_TRUE(config.ok()) << errorOf(config);
  return *config;
}

/// Parameters of one decoder layer, from the config alone.
int64_t layerParameters(const frontend::ModelConfig &c, int64_t layer) {
  int64_t d = c.hiddenSize, h = c.numAttentionHeads;
  int64_t n = 2 * d; // input and post-attention norms
  if (c.mla) {
    const frontend::MlaConfig &m = *c.mla;
    if (m.qLoraRank)
      n += d * *m.qLoraRank + *m.qLoraRank + *m.qLoraRank * h * m.qkHeadDim();
    else
      n += d * h * m.qkHeadDim();
    n += d * (m.kvLoraRank + m.qkRopeHeadDim) + m.kvLoraRank +
         m.kvLoraRank * h * (m.qkNopeHeadDim + m.vHeadDim) + h * m.vHeadDim * d;
  } else {
    int64_t kv = c.numKeyValueHeads, hd = c.headDim;
    n += d * h * hd + 2 * d * kv * hd + h * hd * d;
    if (c.qkvBias)
      n += h * hd + 2 * kv * hd;
  }
  if (c.isMoeLayer(layer)) {
    const frontend::MoeConfig &m = *c.moe;
    n += m.nRoutedExperts * d; // router
    if (m.topkMethod == frontend::TopkMethod::NoauxTc)
      n += m.nRoutedExperts; // e_score_correction_bias
    n += m.nRoutedExperts * 3 * d * m.moeIntermediateSize;
    n += 3 * d * m.moeIntermediateSize * m.nSharedExperts;
  } else {
    n += 3 * d * c.intermediateSize;
  }
  return n;
}

int64_t modelParameters(const frontend::ModelConfig &c, bool withMtp) {
  int64_t d = c.hiddenSize, v = c.vocabSize;
  int64_t n = v * d + d + (c.tieWordEmbeddings ? 0 : v * d);
  for (int64_t l = 0; l < c.numHiddenLayers; ++l)
    n += layerParameters(c, l);
  if (withMtp)
    for (int64_t k = 0; k < c.numNextnPredictLayers; ++k)
      // embedding, enorm, hnorm, eh_proj, block, shared-head norm and head
      n += v * d + 2 * d + 2 * d * d +
           layerParameters(c, c.numHiddenLayers + k) + d + v * d;
  return n;
}

int64_t declaredParameters(mlir::ModuleOp module) {
  int64_t n = 0;
  module.walk([&](mlir::kiln::ParameterOp p) {
    n += p.getTensorType().getNumElements();
  });
  return n;
}

template <typename OpT> int64_t countOps(mlir::Operation *root) {
  int64_t n = 0;
  root->walk([&](OpT) { ++n; });
  return n;
}

std::filesystem::path writeTinyModel(mlir::MLIRContext &context,
                                     const std::string &preset,
                                     const std::filesystem::path &dir,
                                     frontend::DType dtype) {
  InitModelOptions options;
  options.configJson = std::string(*findPreset(preset));
  options.configName = preset;
  options.seed = 7;
  options.outputDir = dir / preset;
  options.dtype = dtype;
  absl::Status status = initModel(context, options);
  EXPECT_TRUE(status.ok()) << errorOf(status);
  return options.outputDir;
}

/// Copies the checkpoint `model` to `dest`, passing every tensor through
/// `edit`, which may change it or drop it (nullopt).
std::filesystem::path rewriteCheckpoint(
    const std::filesystem::path &model, const std::filesystem::path &dest,
    const std::function<std::optional<frontend::TensorToWrite>(
        const frontend::TensorInfo &, std::span<const std::byte>)> &edit) {
  auto file = frontend::SafetensorsFile::open(model / "model.safetensors");
  EXPECT_TRUE(file.ok()) << errorOf(file);
  std::vector<frontend::TensorToWrite> tensors;
  for (const frontend::TensorInfo &t : (*file)->tensors())
    if (std::optional<frontend::TensorToWrite> w = edit(t, (*file)->data(t)))
      tensors.push_back(*w);
  std::filesystem::create_directories(dest);
  std::filesystem::copy_file(model / "config.json", dest / "config.json");
  EXPECT_TRUE(
      frontend::writeSafetensors(dest / "model.safetensors", tensors).ok());
  return dest;
}

class TinyModel : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyModel, InitImportVerify) {
  mlir::MLIRContext context;
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path model =
      writeTinyModel(context, GetParam(), dir, frontend::DType::F32);

  absl::StatusOr<ImportedModel> imported = importModel(context, model);
  ASSERT_TRUE(imported.ok()) << errorOf(imported);
  const frontend::ModelConfig &c = imported->config;
  mlir::ModuleOp module = *imported->module;
  ASSERT_NE(imported->checkpoint, nullptr);

  EXPECT_EQ(declaredParameters(module), modelParameters(c, /*withMtp=*/true));
  int64_t mtp = c.numNextnPredictLayers;
  EXPECT_EQ(countOps<mlir::kiln::AttentionOp>(module), c.numHiddenLayers + mtp);
  int64_t moeLayers = 0;
  for (int64_t l = 0; l < c.numHiddenLayers + mtp; ++l)
    moeLayers += c.isMoeLayer(l);
  EXPECT_EQ(countOps<mlir::kiln::MoEGateOp>(module), moeLayers);
  EXPECT_EQ(countOps<mlir::func::FuncOp>(module), 1 + mtp);
  // Weights keep the checkpoint's dtype.
  module.walk([&](mlir::kiln::ParameterOp p) {
    EXPECT_TRUE(p.getTensorType().getElementType().isF32())
        << p.getSymName().str();
  });
}

INSTANTIATE_TEST_SUITE_P(Presets, TinyModel,
                         ::testing::Values("tiny-deepseek-v3",
                                           "tiny-deepseek-v2",
                                           "tiny-deepseek-v2-lite",
                                           "tiny-qwen2", "tiny-llama"),
                         [](const auto &info) {
                           std::string name = info.param;
                           for (char &ch : name)
                             if (ch == '-')
                               ch = '_';
                           return name;
                         });

TEST(Builder, ReferenceConfigsShapeOnly) {
  for (const char *preset : {"deepseek-v3", "deepseek-v2", "deepseek-v2-lite",
                             "r1-distill-qwen-1.5b", "r1-distill-llama-8b"}) {
    SCOPED_TRACE(preset);
    frontend::ModelConfig c = presetConfig(preset);
    mlir::MLIRContext context;
    mlir::OwningOpRef<mlir::ModuleOp> module = buildModel(context, c, {});
    EXPECT_EQ(
        declaredParameters(*module) -
            // FP8 block scales are parameters too.
            [&] {
              int64_t scales = 0;
              module->walk([&](mlir::kiln::ParameterOp p) {
                if (p.getSymName().ends_with("_scale_inv"))
                  scales += p.getTensorType().getNumElements();
              });
              return scales;
            }(),
        modelParameters(c, /*withMtp=*/true));
  }
}

TEST(Builder, DeepSeekV3Structure) {
  frontend::ModelConfig c = presetConfig("deepseek-v3");
  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module = buildModel(context, c, {});
  auto forward = module->lookupSymbol<mlir::func::FuncOp>("forward");
  auto mtp = module->lookupSymbol<mlir::func::FuncOp>("mtp_1");
  ASSERT_TRUE(forward && mtp);
  EXPECT_EQ(countOps<mlir::kiln::AttentionOp>(forward), 61);
  EXPECT_EQ(countOps<mlir::kiln::MoEGateOp>(forward), 58);
  EXPECT_EQ(countOps<mlir::kiln::MoEGateOp>(mtp), 1);
  forward.walk([](mlir::kiln::MoEGateOp gate) {
    EXPECT_EQ(gate.getTopK(), 8u);
    EXPECT_EQ(gate.getNGroup(), 8u);
    EXPECT_EQ(gate.getTopkGroup(), 4u);
    EXPECT_EQ(gate.getTopkMethod(), mlir::kiln::TopkMethod::noaux_tc);
    EXPECT_EQ(gate.getScoringFunc(), mlir::kiln::ScoringFunc::sigmoid);
    EXPECT_TRUE(gate.getNormTopkProb());
    EXPECT_DOUBLE_EQ(gate.getRoutedScalingFactor().convertToDouble(), 2.5);
  });
  forward.walk(
      [](mlir::kiln::MoEDispatchOp d) { EXPECT_EQ(d.getNumExperts(), 256u); });
  // MLA softmax scale: 192^-0.5 * (0.1 * ln 40 + 1)^2.
  double mscale = 0.1 * std::log(40.0) + 1.0;
  forward.walk([&](mlir::kiln::AttentionOp a) {
    EXPECT_NEAR(a.getScale().convertToDouble(),
                std::pow(192.0, -0.5) * mscale * mscale, 1e-12);
  });
  // Quantizable projections are FP8 with 128x128 block scales; router,
  // embeddings, norms and heads stay bf16.
  auto qa = module->lookupSymbol<mlir::kiln::ParameterOp>(
      "model.layers.0.self_attn.q_a_proj.weight");
  auto qaScale = module->lookupSymbol<mlir::kiln::ParameterOp>(
      "model.layers.0.self_attn.q_a_proj.weight_scale_inv");
  auto router = module->lookupSymbol<mlir::kiln::ParameterOp>(
      "model.layers.3.mlp.gate.weight");
  ASSERT_TRUE(qa && qaScale && router);
  EXPECT_TRUE(
      mlir::isa<mlir::Float8E4M3FNType>(qa.getTensorType().getElementType()));
  EXPECT_EQ(qaScale.getTensorType().getShape(),
            llvm::ArrayRef<int64_t>({12, 56}));
  EXPECT_TRUE(router.getTensorType().getElementType().isBF16());
}

TEST(Builder, TiedEmbeddingsHaveNoHead) {
  frontend::ModelConfig c = presetConfig("tiny-llama");
  c.tieWordEmbeddings = true;
  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module = buildModel(context, c, {});
  EXPECT_FALSE(module->lookupSymbol("lm_head.weight"));
  EXPECT_EQ(declaredParameters(*module), modelParameters(c, false));
}

TEST(Builder, Bf16ActivationsAndCache) {
  frontend::ModelConfig c = presetConfig("tiny-qwen2");
  mlir::MLIRContext context;
  BuildOptions options;
  options.bf16Activations = true;
  mlir::OwningOpRef<mlir::ModuleOp> module = buildModel(context, c, options);
  module->walk([](mlir::kiln::KVCacheOp slot) {
    EXPECT_TRUE(slot.getEntryTensorType().getElementType().isBF16());
  });
}

TEST(Import, CheckpointWithoutMtpTensorsBuildsNoMtp) {
  // HF's DeepseekV3ForCausalLM saves no MTP layer: drop those tensors.
  mlir::MLIRContext context;
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path model =
      writeTinyModel(context, "tiny-deepseek-v3", dir, frontend::DType::BF16);
  std::filesystem::path stripped = rewriteCheckpoint(
      model, dir / "stripped",
      [](const frontend::TensorInfo &t, std::span<const std::byte> data)
          -> std::optional<frontend::TensorToWrite> {
        if (t.name.rfind("model.layers.3.", 0) == 0)
          return std::nullopt;
        return frontend::TensorToWrite{t.name, t.dtype, t.shape, data};
      });

  absl::StatusOr<ImportedModel> imported = importModel(context, stripped);
  ASSERT_TRUE(imported.ok()) << errorOf(imported);
  EXPECT_FALSE(imported->module->lookupSymbol("mtp_1"));
  EXPECT_EQ(declaredParameters(*imported->module),
            modelParameters(imported->config, /*withMtp=*/false));
}

TEST(Import, ReportsWrongShapeAndMissingTensor) {
  mlir::MLIRContext context;
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path model =
      writeTinyModel(context, "tiny-llama", dir, frontend::DType::BF16);
  std::vector<uint16_t> wrongNorm(32, 0);
  std::filesystem::path broken = rewriteCheckpoint(
      model, dir / "broken",
      [&](const frontend::TensorInfo &t, std::span<const std::byte> data)
          -> std::optional<frontend::TensorToWrite> {
        if (t.name == "lm_head.weight")
          return std::nullopt;
        if (t.name == "model.norm.weight")
          return frontend::TensorToWrite{
              t.name, t.dtype, {32}, std::as_bytes(std::span(wrongNorm))};
        return frontend::TensorToWrite{t.name, t.dtype, t.shape, data};
      });
  absl::StatusOr<ImportedModel> imported = importModel(context, broken);
  ASSERT_FALSE(imported.ok());
  EXPECT_THAT(errorOf(imported),
              HasSubstr("model.safetensors: tensor 'model.norm.weight': shape "
                        "[32] but the config needs [64]"));
  EXPECT_THAT(errorOf(imported), HasSubstr("missing tensor 'lm_head.weight'"));
}

TEST(Import, ConfigErrorsNameTheFile) {
  mlir::MLIRContext context;
  std::filesystem::path dir = freshTempDir();
  std::ofstream(dir / "config.json")
      << R"({"architectures": ["GPT2LMHeadModel"]})";
  absl::StatusOr<ImportedModel> imported = importModel(context, dir);
  ASSERT_FALSE(imported.ok());
  EXPECT_THAT(errorOf(imported), HasSubstr("config.json"));
  EXPECT_THAT(errorOf(imported), HasSubstr("GPT2LMHeadModel"));
}

/// Writes a checkpoint holding exactly the tensors `config` declares
/// shape-only (FP8 weights and their scales included), filled with `fill`.
std::filesystem::path writeDeclaredCheckpoint(mlir::MLIRContext &context,
                                              const std::string &configJson,
                                              const std::filesystem::path &dir,
                                              uint8_t fill) {
  absl::StatusOr<frontend::ModelConfig> config =
      frontend::parseModelConfig(configJson, "config.json");
  EXPECT_TRUE(config.ok()) << errorOf(config);
  mlir::OwningOpRef<mlir::ModuleOp> module = buildModel(context, *config, {});
  std::vector<frontend::ExpectedTensor> expected = expectedTensors(*module);
  std::vector<std::string> data;
  data.reserve(expected.size());
  std::vector<frontend::TensorToWrite> tensors;
  for (const frontend::ExpectedTensor &t : expected) {
    int64_t bytes = frontend::dtypeSize(t.dtypes.front());
    for (int64_t d : t.shape)
      bytes *= d;
    data.emplace_back(static_cast<size_t>(bytes), static_cast<char>(fill));
    tensors.push_back({t.name, t.dtypes.front(), t.shape,
                       std::as_bytes(std::span(data.back()))});
  }
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << configJson;
  EXPECT_TRUE(
      frontend::writeSafetensors(dir / "model.safetensors", tensors).ok());
  return dir;
}

std::string fp8Config() {
  std::string json(*findPreset("tiny-deepseek-v3"));
  json.insert(json.find('{') + 1,
              R"("quantization_config": {"activation_scheme": "dynamic",
                 "fmt": "e4m3", "quant_method": "fp8",
                 "weight_block_size": [32, 32]},)");
  return json;
}

TEST(Import, NativeFp8Checkpoint) {
  mlir::MLIRContext context;
  std::filesystem::path dir =
      writeDeclaredCheckpoint(context, fp8Config(), freshTempDir() / "m", 0x38);
  absl::StatusOr<ImportedModel> imported = importModel(context, dir);
  ASSERT_TRUE(imported.ok()) << errorOf(imported);
  mlir::ModuleOp module = *imported->module;
  auto qb = module.lookupSymbol<mlir::kiln::ParameterOp>(
      "model.layers.0.self_attn.q_b_proj.weight");
  auto qbScale = module.lookupSymbol<mlir::kiln::ParameterOp>(
      "model.layers.0.self_attn.q_b_proj.weight_scale_inv");
  auto experts = module.lookupSymbol<mlir::kiln::ParameterOp>(
      "model.layers.1.mlp.experts.gate_proj.weight_scale_inv");
  ASSERT_TRUE(qb && qbScale && experts);
  EXPECT_TRUE(
      mlir::isa<mlir::Float8E4M3FNType>(qb.getTensorType().getElementType()));
  // q_b_proj is [4 heads * 24, 48]: ceil(96/32) x ceil(48/32) blocks.
  EXPECT_EQ(qbScale.getTensorType().getShape(),
            llvm::ArrayRef<int64_t>({3, 2}));
  // Stacked per-expert scales: [16 experts, ceil(32/32), ceil(64/32)].
  EXPECT_EQ(experts.getTensorType().getShape(),
            llvm::ArrayRef<int64_t>({16, 1, 2}));
  int64_t scaled = 0;
  module.walk(
      [&](mlir::kiln::LinearOp op) { scaled += !!op.getWeightScale(); });
  module.walk(
      [&](mlir::kiln::GroupedLinearOp op) { scaled += !!op.getWeightScale(); });
  EXPECT_GT(scaled, 0);
}

TEST(Import, Fp8WhereTheModelWantsBf16IsRejected) {
  mlir::MLIRContext context;
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path model =
      writeTinyModel(context, "tiny-qwen2", dir, frontend::DType::BF16);
  std::vector<uint8_t> fp8Norm(64, 0x38);
  std::filesystem::path broken = rewriteCheckpoint(
      model, dir / "broken",
      [&](const frontend::TensorInfo &t, std::span<const std::byte> data) {
        if (t.name == "model.norm.weight")
          return frontend::TensorToWrite{t.name, frontend::DType::F8_E4M3,
                                         t.shape,
                                         std::as_bytes(std::span(fp8Norm))};
        return frontend::TensorToWrite{t.name, t.dtype, t.shape, data};
      });
  absl::StatusOr<ImportedModel> imported = importModel(context, broken);
  EXPECT_THAT(errorOf(imported),
              HasSubstr("model.safetensors: tensor 'model.norm.weight': dtype "
                        "F8_E4M3 not allowed (expected one of BF16)"));
}

TEST(InitModel, SameSeedSameBytesOtherSeedDiffers) {
  mlir::MLIRContext context;
  std::filesystem::path dir = freshTempDir();
  auto read = [](const std::filesystem::path &p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  InitModelOptions options;
  options.configJson = std::string(*findPreset("tiny-qwen2"));
  options.configName = "tiny-qwen2";
  for (auto [seed, sub] : {std::pair{1, "a"}, {1, "b"}, {2, "c"}}) {
    options.seed = seed;
    options.outputDir = dir / sub;
    ASSERT_TRUE(initModel(context, options).ok());
  }
  EXPECT_EQ(read(dir / "a/model.safetensors"),
            read(dir / "b/model.safetensors"));
  EXPECT_NE(read(dir / "a/model.safetensors"),
            read(dir / "c/model.safetensors"));
  EXPECT_EQ(read(dir / "a/config.json"), *findPreset("tiny-qwen2"));
}

TEST(InitModel, RefusesHugeModels) {
  mlir::MLIRContext context;
  InitModelOptions options;
  options.configJson = std::string(*findPreset("r1-distill-llama-8b"));
  options.configName = "r1-distill-llama-8b";
  options.outputDir = freshTempDir() / "m";
  absl::Status status = initModel(context, options);
  EXPECT_THAT(errorOf(status), HasSubstr("over the limit"));
  EXPECT_FALSE(
      std::filesystem::exists(options.outputDir / "model.safetensors"));
}

} // namespace
} // namespace kiln::models
