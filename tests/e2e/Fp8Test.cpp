// FP8 end to end: DeepSeek-V3's recipe (e4m3 weights with block scales,
// activations quantized per token per block) against the same model in
// bf16, native FP8 checkpoints against quantizing at compile time and at
// load, and the FP8 latent KV cache against the f32 one.
//
// The bound on FP8 logits. e4m3 keeps 3 mantissa bits: rounding changes a
// value by at most 2^-4 relative, against 2^-8 for bf16, so to first order a
// perturbation by FP8 rounding is 16 times one by bf16 rounding, and 32 times
// when both operands of every GEMM are rounded (weights and activations).
// How far such perturbations carry to the logits is a property of the model,
// not of the arithmetic: the tiny random models amplify them (their MoE
// routing flips discretely, long random prompts make attention sensitive),
// so much that bf16 weights already move their logits by ~2% on average and
// up to ~40% at single positions over 128-token prompts. The tests therefore
// measure that sensitivity on the same positions, as the bf16-weight model
// against the f32 golden model, and bound the mean per-position relative
// error of an FP8 variant by its precision ratio times it.
#include "kiln/Float.h"
#include "kiln/Runtime.h"
#include "tests/e2e/E2eUtil.h"

#include "frontend/Safetensors.h"
#include "ir/KilnOps.h"

#include "gtest/gtest.h"
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <list>
#include <random>
#include <set>

namespace kiln {
namespace {

using frontend::testing::errorOf;
using frontend::testing::freshTempDir;

using testing::argmax;
using testing::kGolden;
/// e4m3 over bf16 relative rounding error (see the top of the file).
constexpr double kFp8OverBf16 = 16.0;

std::vector<std::vector<int32_t>> randomPrompts(int count, int length,
                                                int64_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> token(0,
                                               static_cast<int32_t>(vocab) - 1);
  std::vector<std::vector<int32_t>> prompts(count);
  for (auto &p : prompts)
    for (int i = 0; i < length; ++i)
      p.push_back(token(rng));
  return prompts;
}

/// Every logits row of a run: each prompt position, then `steps` decode
/// steps fed with `feed[seq][step]` (each sequence's own greedy tokens when
/// empty); `greedy` records the tokens the rows pick.
struct Logits {
  std::vector<std::vector<float>> rows;
  std::vector<std::vector<int32_t>> greedy; // [seq][step]
};

Logits runAll(const std::filesystem::path &artifact,
              const std::vector<std::vector<int32_t>> &prompts, int steps,
              const std::vector<std::vector<int32_t>> &feed = {}) {
  Logits run;
  auto model = Model::open(artifact);
  EXPECT_TRUE(model.ok()) << errorOf(model);
  if (!model.ok())
    return run;
  auto session = Session::create(**model);
  EXPECT_TRUE(session.ok()) << errorOf(session);
  Session &s = **session;
  auto ids = s.prefill(prompts);
  EXPECT_TRUE(ids.ok()) << errorOf(ids);
  if (!ids.ok())
    return run;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (size_t p = 0; p < prompts[i].size(); ++p) {
      auto row = s.promptLogits((*ids)[i], static_cast<int64_t>(p));
      EXPECT_TRUE(row.ok()) << errorOf(row);
      if (row.ok())
        run.rows.emplace_back(row->begin(), row->end());
    }
  run.greedy.resize(prompts.size());
  for (int step = 0; step < steps; ++step) {
    std::vector<int32_t> next;
    for (size_t i = 0; i < prompts.size(); ++i) {
      int32_t own = argmax(s.logits((*ids)[i]));
      run.greedy[i].push_back(own);
      next.push_back(feed.empty() ? own : feed[i][step]);
    }
    EXPECT_TRUE(s.decode(*ids, next).ok());
    for (size_t i = 0; i < prompts.size(); ++i) {
      std::span<const float> row = s.logits((*ids)[i]);
      run.rows.emplace_back(row.begin(), row.end());
    }
  }
  return run;
}

/// Position by position: the largest |ours - reference| against the largest
/// |reference| (overall, and the mean of that ratio per position), top-1
/// agreement, and how the reference's margin between its top two logits
/// compares with the logit error e = max |ours - reference| at each
/// disagreement: below e (`belowError`), and below 2e (`nearTies`: a
/// margin the error can close, since it moves each logit by at most e).
struct Agreement {
  double maxDiff = 0, maxScale = 0, meanRelative = 0;
  int positions = 0, top1 = 0, belowError = 0, nearTies = 0;
  double relative() const { return maxDiff / maxScale; }
};

Agreement compare(const Logits &ours, const Logits &reference) {
  Agreement a;
  EXPECT_EQ(ours.rows.size(), reference.rows.size());
  for (size_t r = 0; r < std::min(ours.rows.size(), reference.rows.size());
       ++r) {
    const std::vector<float> &x = ours.rows[r], &y = reference.rows[r];
    double diff = 0, scale = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      diff = std::max(diff, std::fabs(double(x[i]) - y[i]));
      scale = std::max(scale, std::fabs(double(y[i])));
    }
    a.maxDiff = std::max(a.maxDiff, diff);
    a.maxScale = std::max(a.maxScale, scale);
    a.meanRelative += diff / scale;
    ++a.positions;
    if (argmax(x) == argmax(y)) {
      ++a.top1;
      continue;
    }
    std::vector<float> sorted(y);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(),
                      std::greater<>());
    float margin = sorted[0] - sorted[1];
    a.belowError += margin < diff;
    a.nearTies += margin < 2 * diff;
  }
  a.meanRelative /= std::max(a.positions, 1);
  return a;
}

void report(const std::string &what, const Agreement &a) {
  std::printf("%s: %d positions, max |diff| / max |logit| = %.4f (mean per "
              "position %.4f), top-1 agreement %d/%d (%.2f%%); disagreements "
              "with a top-2 margin below the position's logit error %d/%d, "
              "below twice that %d/%d\n",
              what.c_str(), a.positions, a.relative(), a.meanRelative, a.top1,
              a.positions, 100.0 * a.top1 / a.positions, a.belowError,
              a.positions - a.top1, a.nearTies, a.positions - a.top1);
  ::testing::Test::RecordProperty(what + "_relative_error",
                                  std::to_string(a.relative()));
  ::testing::Test::RecordProperty(what + "_top1",
                                  std::to_string(a.top1) + "/" +
                                      std::to_string(a.positions));
}

testing::CompileSettings settings(bool fp8, int64_t block = 128) {
  testing::CompileSettings s;
  s.optimize.quantizeFp8 = fp8;
  s.optimize.fp8Block = block;
  s.plan = {.maxBatch = 8, .maxPrefill = 128, .maxContext = 160};
  return s;
}

/// How much the tiny DeepSeek-V3 model's logits move when its weights are
/// rounded to bf16, on these prompts: the bf16 golden model against the f32
/// one (same weights before rounding).
Agreement bf16Sensitivity(const std::filesystem::path &dir,
                          const std::vector<std::vector<int32_t>> &prompts,
                          int steps) {
  Logits f32 =
      runAll(testing::compileArtifact(kGolden / "deepseek-v3",
                                      dir / "sens-f32.kiln", settings(false)),
             prompts, steps);
  Logits bf16 =
      runAll(testing::compileArtifact(kGolden / "deepseek-v3-bf16",
                                      dir / "sens-bf16.kiln", settings(false)),
             prompts, steps, f32.greedy);
  Agreement a = compare(bf16, f32);
  report("bf16_vs_f32", a);
  return a;
}

/// FP8 rounding of `operands` operands per GEMM moves the logits at most
/// operands * 16 times as much as bf16 rounding does (see the top), and
/// every top-1 disagreement is a margin the measured error can close.
void expectFp8Bound(const Agreement &a, const Agreement &bf16, int operands) {
  double bound = operands * kFp8OverBf16 * bf16.meanRelative;
  EXPECT_LE(a.meanRelative, bound)
      << "mean per-position relative error beyond " << operands << " x "
      << kFp8OverBf16 << " x the bf16 sensitivity";
  EXPECT_EQ(a.nearTies, a.positions - a.top1)
      << "a top-1 disagreement with a margin the FP8 error cannot close";
}

// The acceptance run: 8 prompts of 128 random tokens and 16 decode
// steps (fed the bf16 run's greedy tokens) = 1,152 predicted positions of
// the tiny DeepSeek-V3 model with bf16 weights, FP8 against bf16.
TEST(Fp8, TinyDeepSeekV3AgreesWithBf16OverAThousandPositions) {
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path model = kGolden / "deepseek-v3-bf16";
  auto prompts = randomPrompts(8, 128, 256, 7);
  Logits bf16 = runAll(
      testing::compileArtifact(model, dir / "bf16.kiln", settings(false)),
      prompts, 16);
  Logits fp8 =
      runAll(testing::compileArtifact(model, dir / "fp8.kiln", settings(true)),
             prompts, 16, bf16.greedy);
  Agreement a = compare(fp8, bf16);
  report("fp8_vs_bf16", a);
  EXPECT_GE(a.positions, 1000);
  expectFp8Bound(a, bf16Sensitivity(dir, prompts, 16), 2);
}

/// Quantizes [rows, cols] floats per `block` x `block` as DeepSeek's
/// checkpoints are made (the test's own implementation of the recipe).
void quantize(const std::vector<float> &w, int64_t rows, int64_t cols,
              int64_t block, std::vector<uint8_t> &codes,
              std::vector<float> &scales) {
  int64_t gr = (rows + block - 1) / block, gc = (cols + block - 1) / block;
  codes.assign(w.size(), 0);
  scales.assign(gr * gc, 1.0f);
  for (int64_t br = 0; br < gr; ++br)
    for (int64_t bc = 0; bc < gc; ++bc) {
      float amax = 0;
      for (int64_t r = br * block; r < std::min(rows, (br + 1) * block); ++r)
        for (int64_t c = bc * block; c < std::min(cols, (bc + 1) * block); ++c)
          amax = std::max(amax, std::fabs(w[r * cols + c]));
      float s = amax > 0 ? amax / 448.0f : 1.0f;
      scales[br * gc + bc] = s;
      for (int64_t r = br * block; r < std::min(rows, (br + 1) * block); ++r)
        for (int64_t c = bc * block; c < std::min(cols, (bc + 1) * block); ++c)
          codes[r * cols + c] = floatToE4m3(w[r * cols + c] / s);
    }
}

/// The checkpoint tensors kiln-quantize-fp8 turns into FP8 for `model`.
std::set<std::string> quantizedTensors(const std::filesystem::path &model,
                                       int64_t block) {
  mlir::MLIRContext context;
  auto imported = models::importModel(context, model);
  EXPECT_TRUE(imported.ok()) << errorOf(imported);
  std::set<std::string> names;
  if (!imported.ok())
    return names;
  mlir::PassManager pm(&context);
  mlir::kiln::OptimizeOptions optimize;
  optimize.quantizeFp8 = true;
  optimize.fp8Block = block;
  mlir::kiln::buildOptimizePipeline(pm, optimize);
  EXPECT_TRUE(mlir::succeeded(pm.run(*imported->module)));
  imported->module->walk([&](mlir::kiln::ParameterOp p) {
    auto q = p.getQuantizeAttr();
    if (!q || q.getScale() || p.getTransformAttr())
      return;
    std::string source = p.getSourceName().str();
    if (size_t at = source.find("{}"); at != std::string::npos) {
      for (int64_t e = 0; e < p.getTensorType().getDimSize(0); ++e)
        names.insert(source.substr(0, at) + std::to_string(e) +
                     source.substr(at + 2));
    } else {
      names.insert(source);
    }
  });
  return names;
}

/// Writes `dir` with the f32 golden checkpoint's tensors, those in
/// `quantized` as DeepSeek ships FP8 (F8_E4M3 + `<name>_scale_inv`) or,
/// with `dequantized`, as the f32 values those codes and scales stand for.
void writeFp8Checkpoint(const std::filesystem::path &from,
                        const std::filesystem::path &dir,
                        const std::set<std::string> &quantized, int64_t block,
                        bool dequantized) {
  std::filesystem::create_directories(dir);
  std::ifstream in(from / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  if (!dequantized)
    config["quantization_config"] = {{"quant_method", "fp8"},
                                     {"fmt", "e4m3"},
                                     {"activation_scheme", "dynamic"},
                                     {"weight_block_size", {block, block}}};
  std::ofstream(dir / "config.json") << config.dump(2);

  auto file = frontend::SafetensorsFile::open(from / "model.safetensors");
  ASSERT_TRUE(file.ok()) << errorOf(file);
  std::vector<frontend::TensorToWrite> tensors;
  std::list<std::vector<std::byte>> storage;
  auto keep = [&](std::vector<std::byte> bytes) -> std::span<const std::byte> {
    storage.push_back(std::move(bytes));
    return storage.back();
  };
  for (const frontend::TensorInfo &t : (*file)->tensors()) {
    std::span<const std::byte> bytes = (*file)->data(t);
    if (!quantized.count(t.name)) {
      tensors.push_back({t.name, t.dtype, t.shape, bytes});
      continue;
    }
    ASSERT_EQ(t.dtype, frontend::DType::F32) << t.name;
    ASSERT_EQ(t.shape.size(), 2u) << t.name;
    int64_t rows = t.shape[0], cols = t.shape[1];
    std::vector<float> w(rows * cols);
    std::memcpy(w.data(), bytes.data(), bytes.size());
    std::vector<uint8_t> codes;
    std::vector<float> scales;
    quantize(w, rows, cols, block, codes, scales);
    auto asBytes = [](const auto &v) {
      const std::byte *p = reinterpret_cast<const std::byte *>(v.data());
      return std::vector<std::byte>(p, p + v.size() * sizeof(v[0]));
    };
    if (dequantized) {
      int64_t gc = (cols + block - 1) / block;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          w[r * cols + c] = e4m3ToFloat(codes[r * cols + c]) *
                            scales[(r / block) * gc + c / block];
      tensors.push_back({t.name, t.dtype, t.shape, keep(asBytes(w))});
      continue;
    }
    tensors.push_back(
        {t.name, frontend::DType::F8_E4M3, t.shape, keep(asBytes(codes))});
    tensors.push_back({t.name + "_scale_inv",
                       frontend::DType::F32,
                       {(rows + block - 1) / block, (cols + block - 1) / block},
                       keep(asBytes(scales))});
  }
  absl::Status written =
      frontend::writeSafetensors(dir / "model.safetensors", tensors);
  ASSERT_TRUE(written.ok()) << errorOf(written);
}

// A native FP8 checkpoint (F8_E4M3 + weight_scale_inv, quantization_config)
// runs as shipped, and computes exactly what quantizing the f32 checkpoint
// does, at compile time (embedded weights) or at load (external weights);
// against the dequantized weights run unquantized, only the activation
// quantization differs. Blocks of 16 give the tiny model many blocks per
// matrix, and let absorbed MLA slice kv_b_proj's blocks per head.
TEST(Fp8, NativeCheckpointMatchesQuantizingAtCompileAndLoad) {
  constexpr int64_t kBlock = 16;
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path f32 = kGolden / "deepseek-v3";
  std::set<std::string> names = quantizedTensors(f32, kBlock);
  ASSERT_TRUE(names.count("model.layers.0.self_attn.kv_b_proj.weight"));
  writeFp8Checkpoint(f32, dir / "native", names, kBlock, false);
  writeFp8Checkpoint(f32, dir / "dequantized", names, kBlock, true);

  auto prompts = randomPrompts(4, 40, 256, 11);
  testing::CompileSettings asShipped = settings(false);
  asShipped.optimize.quantizeFp8 = true;
  asShipped.optimize.checkpointOnly = true;
  Logits native = runAll(
      testing::compileArtifact(dir / "native", dir / "native.kiln", asShipped),
      prompts, 8);
  testing::CompileSettings atCompile = settings(true, kBlock);
  Logits compiled =
      runAll(testing::compileArtifact(f32, dir / "compiled.kiln", atCompile),
             prompts, 8);
  testing::CompileSettings atLoad = atCompile;
  atLoad.weights = codegen::WeightsMode::External;
  Logits loaded = runAll(
      testing::compileArtifact(f32, dir / "loaded.kiln", atLoad), prompts, 8);
  Logits plain = runAll(testing::compileArtifact(dir / "dequantized",
                                                 dir / "dequantized.kiln",
                                                 settings(false)),
                        prompts, 8, native.greedy);

  // The same codes, scales and kernels: the same numbers.
  ASSERT_EQ(native.rows.size(), compiled.rows.size());
  EXPECT_EQ(native.rows, compiled.rows);
  EXPECT_EQ(native.rows, loaded.rows);
  // Only the activations are rounded to FP8 here.
  Agreement a = compare(native, plain);
  report("native_fp8_vs_dequantized", a);
  expectFp8Bound(a, bf16Sensitivity(dir, prompts, 8), 1);
}

// The FP8 latent cache (c_kv as e4m3 with a scale per 128 values, k_pe as
// bf16) against the f32 cache: 656 bytes per token and layer for DeepSeek's
// dimensions (tested in lit), and logits within the FP8 bound.
TEST(Fp8, LatentKvCacheAgreesWithF32Cache) {
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path model = kGolden / "deepseek-v3";
  auto prompts = randomPrompts(8, 100, 256, 5);
  testing::CompileSettings f32Cache = settings(false);
  f32Cache.optimize.mla = "absorbed";
  testing::CompileSettings fp8Cache = f32Cache;
  fp8Cache.optimize.latentCacheDtype = "fp8";
  Logits reference = runAll(
      testing::compileArtifact(model, dir / "f32.kiln", f32Cache), prompts, 24);
  std::filesystem::path fp8Artifact =
      testing::compileArtifact(model, dir / "fp8.kiln", fp8Cache);
  Logits fp8 = runAll(fp8Artifact, prompts, 24, reference.greedy);
  auto opened = Model::open(fp8Artifact);
  ASSERT_TRUE(opened.ok()) << errorOf(opened);
  // 3 layers of 32 codes, 1 scale and 8 bf16 values.
  EXPECT_EQ((*opened)->info().kvCacheBytesPerToken, 3u * (32 + 4 + 16));
  // One operand (the cached latent) rounded to FP8.
  Agreement a = compare(fp8, reference);
  report("fp8_cache_vs_f32_cache", a);
  expectFp8Bound(a, bf16Sensitivity(dir, prompts, 24), 1);
}

// The bf16 latent cache (a packed row without e4m3 columns) against the f32
// cache: 2 bytes a value, and logits no further from the f32 cache's than a
// model with every weight rounded to bf16 is from its f32 weights (here
// only the cached latent is rounded).
TEST(LatentCache, Bf16AgreesWithF32Cache) {
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path model = kGolden / "deepseek-v3";
  auto prompts = randomPrompts(8, 100, 256, 6);
  testing::CompileSettings f32Cache = settings(false);
  f32Cache.optimize.mla = "absorbed";
  testing::CompileSettings bf16Cache = f32Cache;
  bf16Cache.optimize.latentCacheDtype = "bf16";
  Logits reference = runAll(
      testing::compileArtifact(model, dir / "f32.kiln", f32Cache), prompts, 24);
  std::filesystem::path bf16Artifact =
      testing::compileArtifact(model, dir / "bf16.kiln", bf16Cache);
  Logits bf16 = runAll(bf16Artifact, prompts, 24, reference.greedy);
  auto opened = Model::open(bf16Artifact);
  ASSERT_TRUE(opened.ok()) << errorOf(opened);
  // 3 layers of 32 + 8 bf16 values.
  EXPECT_EQ((*opened)->info().kvCacheBytesPerToken, 3u * 2 * (32 + 8));
  Agreement a = compare(bf16, reference);
  report("bf16_cache_vs_f32_cache", a);
  Agreement weights = bf16Sensitivity(dir, prompts, 24);
  EXPECT_GT(a.maxDiff, 0.0) << "the cache was not rounded";
  EXPECT_LE(a.meanRelative, weights.meanRelative);
  EXPECT_EQ(a.nearTies, a.positions - a.top1)
      << "a top-1 disagreement with a margin the bf16 error cannot close";
}

} // namespace
} // namespace kiln
