// End to end against Hugging Face transformers: compile each golden model of
// tests/golden (written by make_goldens.py with HF's save_pretrained), run
// it with the CPU runtime, and compare prefill and decode logits with the
// logits HF computed. fp32: max |kiln - hf| / max |hf| <= 1e-4 and the same
// greedy tokens; bf16 weights: the same bound against HF run with the same
// bf16-rounded weights, and the fp32 greedy token wherever the golden marks
// the top-1 margin as safe under bf16 rounding.
#include "kiln/Runtime.h"
#include "tests/e2e/E2eUtil.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

namespace kiln {
namespace {

using frontend::testing::errorOf;
using frontend::testing::freshTempDir;

using testing::argmax;
using testing::kGolden;
constexpr int kPrompts = 3;
constexpr int kSteps = 8;
constexpr double kRelativeTolerance = 1e-4;

/// Compiles like `kiln compile-model`: import, the optimize pipeline (MLA
/// in form `mla`), plan, write.
std::filesystem::path compile(const std::filesystem::path &modelDir,
                              const std::filesystem::path &out,
                              const std::string &mla = "auto",
                              int64_t costPrefillTokens = 0,
                              uint32_t maxContext = 64) {
  testing::CompileSettings settings;
  settings.optimize.mla = mla;
  settings.optimize.prefillTokens = costPrefillTokens;
  settings.plan.maxContext = maxContext;
  return testing::compileArtifact(modelDir, out, settings);
}

/// The golden tensors of one model, read with Kiln's safetensors reader.
class Golden {
public:
  explicit Golden(const std::string &name) {
    auto file =
        frontend::SafetensorsFile::open(kGolden / name / "golden.safetensors");
    EXPECT_TRUE(file.ok()) << errorOf(file);
    file_ = *std::move(file);
    std::ifstream in(kGolden / name / "golden.json");
    json_ = nlohmann::json::parse(in);
  }
  template <typename T> std::span<const T> get(const std::string &name) const {
    const frontend::TensorInfo *t = file_->find(name);
    EXPECT_NE(t, nullptr) << name;
    std::span<const std::byte> bytes = file_->data(*t);
    return {reinterpret_cast<const T *>(bytes.data()),
            bytes.size() / sizeof(T)};
  }
  const nlohmann::json &json() const { return json_; }

private:
  std::unique_ptr<frontend::SafetensorsFile> file_;
  nlohmann::json json_;
};

/// Accumulates max |a - b| and max |b| over every compared row.
struct Error {
  double diff = 0, scale = 0;
  void add(std::span<const float> ours, std::span<const float> reference) {
    ASSERT_EQ(ours.size(), reference.size());
    for (size_t i = 0; i < ours.size(); ++i) {
      diff = std::max(diff, std::fabs(double(ours[i]) - reference[i]));
      scale = std::max(scale, std::fabs(double(reference[i])));
    }
  }
  double relative() const { return diff / scale; }
};

struct Comparison {
  Error error;
  int tokens = 0, tokenMatches = 0, stableTokens = 0, stableMatches = 0;
};

/// Runs the three prompts as one batch, then 8 decode steps fed with HF's
/// greedy tokens; compares logits with `prefix`.* and greedy tokens with
/// HF's fp32 tokens. `hostKernels`: fused groups run as the artifact's
/// generated CPU kernels (checked to be loaded), else as their ops.
Comparison runAndCompare(const std::filesystem::path &artifact,
                         const Golden &golden, const std::string &prefix,
                         bool hostKernels = true) {
  Comparison c;
  LoadOptions options;
  options.hostKernels = hostKernels;
  auto model = Model::open(artifact, options);
  EXPECT_TRUE(model.ok()) << errorOf(model);
  if (!model.ok())
    return c;
  const auto &hostCode = (*model)->info().hostCode;
  EXPECT_EQ(hostCode.size(), 1u);
  for (const ModelInfo::HostCode &code : hostCode) {
    EXPECT_GT(code.kernels, 0u);
    EXPECT_EQ(code.status, hostKernels ? "loaded" : "not used (switched off)");
  }
  auto session = Session::create(**model);
  EXPECT_TRUE(session.ok()) << errorOf(session);
  Session &s = **session;
  int64_t vocab = (*model)->info().vocabSize;

  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kPrompts; ++i) {
    auto tokens =
        golden.get<int32_t>("prefill." + std::to_string(i) + ".tokens");
    prompts.emplace_back(tokens.begin(), tokens.end());
  }
  absl::StatusOr<std::vector<int>> ids = s.prefill(prompts);
  EXPECT_TRUE(ids.ok()) << errorOf(ids);
  if (!ids.ok())
    return c;
  absl::Status st;
  auto track = [&](std::span<const float> ours, int32_t hfToken, bool stable) {
    c.tokens += 1;
    c.tokenMatches += argmax(ours) == hfToken;
    c.stableTokens += stable;
    c.stableMatches += stable && argmax(ours) == hfToken;
  };
  for (int i = 0; i < kPrompts; ++i) {
    std::string n = std::to_string(i);
    auto reference = golden.get<float>(prefix + "prefill." + n + ".logits");
    auto stable = golden.get<uint8_t>("prefill." + n + ".bf16_stable");
    auto fp32 = golden.get<float>("prefill." + n + ".logits");
    for (size_t p = 0; p < prompts[i].size(); ++p) {
      auto ours = s.promptLogits((*ids)[i], p);
      EXPECT_TRUE(ours.ok()) << errorOf(ours);
      if (!ours.ok())
        return c;
      c.error.add(*ours, reference.subspan(p * vocab, vocab));
      track(*ours, argmax(fp32.subspan(p * vocab, vocab)), stable[p]);
    }
  }
  for (int step = 0; step < kSteps; ++step) {
    std::vector<int32_t> fed;
    for (int i = 0; i < kPrompts; ++i) {
      std::string n = std::to_string(i);
      auto reference = golden.get<float>(prefix + "decode." + n + ".logits");
      auto tokens = golden.get<int32_t>("decode." + n + ".tokens");
      auto stable = golden.get<uint8_t>("decode." + n + ".bf16_stable");
      c.error.add(s.logits((*ids)[i]), reference.subspan(step * vocab, vocab));
      track(s.logits((*ids)[i]), tokens[step], stable[step]);
      fed.push_back(tokens[step]);
    }
    if (step + 1 < kSteps) {
      st = s.decode(*ids, fed);
      EXPECT_TRUE(st.ok()) << errorOf(st);
    }
  }
  return c;
}

class GoldenModel : public ::testing::TestWithParam<std::string> {};

// Both ways of running fused groups: the generated CPU kernels (what the
// GPU runs, built for the host) and the runtime's own kernels op by op.
TEST_P(GoldenModel, Fp32MatchesTransformers) {
  Golden golden(GetParam());
  std::filesystem::path artifact =
      compile(kGolden / GetParam(), freshTempDir() / "model.kiln");
  for (bool hostKernels : {true, false}) {
    SCOPED_TRACE(hostKernels ? "generated CPU kernels" : "ops one by one");
    Comparison c = runAndCompare(artifact, golden, "", hostKernels);
    RecordProperty(hostKernels ? "relative_error" : "relative_error_ops",
                   std::to_string(c.error.relative()));
    EXPECT_LE(c.error.relative(), kRelativeTolerance)
        << "max |diff| " << c.error.diff << " over max |logit| "
        << c.error.scale;
    EXPECT_EQ(c.tokenMatches, c.tokens) << "greedy tokens differ from HF's";
  }
}

TEST_P(GoldenModel, Bf16WeightsMatchTransformers) {
  Golden golden(GetParam());
  std::filesystem::path artifact = compile(kGolden / (GetParam() + "-bf16"),
                                           freshTempDir() / "model-bf16.kiln");
  for (bool hostKernels : {true, false}) {
    SCOPED_TRACE(hostKernels ? "generated CPU kernels" : "ops one by one");
    Comparison c = runAndCompare(artifact, golden, "bf16.", hostKernels);
    RecordProperty(hostKernels ? "relative_error" : "relative_error_ops",
                   std::to_string(c.error.relative()));
    EXPECT_LE(c.error.relative(), kRelativeTolerance);
    EXPECT_GT(c.stableTokens, 0);
    EXPECT_EQ(c.stableMatches, c.stableTokens)
        << "top-1 differs from fp32 at a position with a safe margin";
  }
}

TEST_P(GoldenModel, ParameterCountMatchesTransformers) {
  Golden golden(GetParam());
  std::filesystem::path artifact =
      compile(kGolden / GetParam(), freshTempDir() / "model.kiln");
  auto model = Model::open(artifact);
  ASSERT_TRUE(model.ok()) << errorOf(model);
  // HF's num_parameters() leaves out buffers: DeepSeek-V3's
  // e_score_correction_bias is one, Kiln holds it as a parameter.
  uint64_t buffers = 0;
  for (const auto &[name, shapeAndType] :
       golden.json()["checkpoint_tensors"].items())
    if (name.ends_with("e_score_correction_bias"))
      for (int64_t d : shapeAndType[0])
        buffers += static_cast<uint64_t>(d);
  EXPECT_EQ((*model)->info().parameterCount,
            golden.json()["num_parameters"].get<uint64_t>() + buffers);
}

INSTANTIATE_TEST_SUITE_P(Architectures, GoldenModel,
                         ::testing::Values("deepseek-v3", "deepseek-v2",
                                           "deepseek-v2-lite", "qwen2", "llama",
                                           "deepseek-v3-odd", "deepseek-v2-odd",
                                           "qwen2-odd", "llama-odd"),
                         [](const auto &info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

/// Runs prompts as one batch, then `steps` decode steps feeding `feed`
/// (or, when empty, each sequence's own greedy token); returns every logits
/// row the session produced per sequence (last prompt position, then one per
/// step) and the tokens fed.
struct Trace {
  std::vector<std::vector<std::vector<float>>> logits; // [seq][row][vocab]
  std::vector<std::vector<int32_t>> tokens;            // [seq][step]
};

Trace trace(const std::filesystem::path &artifact,
            const std::vector<std::vector<int32_t>> &prompts, int steps,
            const std::vector<std::vector<int32_t>> &feed = {}) {
  Trace t;
  auto model = Model::open(artifact);
  EXPECT_TRUE(model.ok()) << errorOf(model);
  auto session = Session::create(**model);
  EXPECT_TRUE(session.ok()) << errorOf(session);
  Session &s = **session;
  absl::StatusOr<std::vector<int>> ids = s.prefill(prompts);
  EXPECT_TRUE(ids.ok()) << errorOf(ids);
  if (!ids.ok())
    return t;
  t.logits.resize(prompts.size());
  t.tokens.resize(prompts.size());
  for (int step = 0; step <= steps; ++step) {
    std::vector<int32_t> next;
    for (size_t i = 0; i < prompts.size(); ++i) {
      std::span<const float> row = s.logits((*ids)[i]);
      t.logits[i].emplace_back(row.begin(), row.end());
      next.push_back(feed.empty() ? argmax(row) : feed[i][step]);
      t.tokens[i].push_back(next.back());
    }
    if (step < steps) {
      absl::Status st = s.decode(*ids, next);
      EXPECT_TRUE(st.ok()) << errorOf(st);
    }
  }
  return t;
}

double relativeError(const Trace &a, const Trace &b) {
  Error e;
  for (size_t i = 0; i < a.logits.size(); ++i)
    for (size_t r = 0; r < a.logits[i].size(); ++r)
      e.add(a.logits[i][r], b.logits[i][r]);
  return e.relative();
}

std::vector<std::vector<int32_t>> goldenPrompts(const Golden &golden) {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kPrompts; ++i) {
    auto tokens =
        golden.get<int32_t>("prefill." + std::to_string(i) + ".tokens");
    prompts.emplace_back(tokens.begin(), tokens.end());
  }
  return prompts;
}

class MlaForms : public ::testing::TestWithParam<std::string> {};

// Absorbed and naive-from-latent attention compute the same function as the
// naive form: logits within 1e-5 relative over a prefill and 32 greedy
// decode steps, and the same greedy tokens.
TEST_P(MlaForms, MatchNaive) {
  Golden golden(GetParam());
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path model = kGolden / GetParam();
  constexpr int kDecodeSteps = 32;
  std::vector<std::vector<int32_t>> prompts = goldenPrompts(golden);
  Trace naive =
      trace(compile(model, dir / "naive.kiln", "naive"), prompts, kDecodeSteps);

  std::filesystem::path absorbed =
      compile(model, dir / "absorbed.kiln", "absorbed");
  // A cost model that sees 4096-token prefills keeps prefill naive over the
  // latent cache and absorbs decode.
  std::filesystem::path split =
      compile(model, dir / "auto.kiln", "auto", /*costPrefillTokens=*/4096);
  auto info = Model::open(split);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ((*info)->info().entryPoints[0].attention,
            "mla naive_from_latent, latent cache");
  EXPECT_EQ((*info)->info().entryPoints[1].attention,
            "mla absorbed, latent cache");

  for (const std::filesystem::path &artifact : {absorbed, split}) {
    SCOPED_TRACE(artifact.string());
    Trace other = trace(artifact, prompts, kDecodeSteps, naive.tokens);
    double error = relativeError(other, naive);
    RecordProperty(artifact.stem().string() + "_relative_error",
                   std::to_string(error));
    EXPECT_LE(error, 1e-5);
    // Greedy tokens from each form's own logits agree with naive's.
    for (size_t i = 0; i < prompts.size(); ++i)
      for (int step = 0; step <= kDecodeSteps; ++step)
        EXPECT_EQ(argmax(other.logits[i][step]), naive.tokens[i][step])
            << "sequence " << i << " step " << step;
  }
  // The latent cache holds kv_lora_rank + qk_rope_head_dim floats per token
  // and layer, far less than per-head K and V.
  auto naiveModel = Model::open(dir / "naive.kiln");
  auto absorbedModel = Model::open(absorbed);
  ASSERT_TRUE(naiveModel.ok() && absorbedModel.ok());
  EXPECT_LT((*absorbedModel)->info().kvCacheBytesPerToken * 3,
            (*naiveModel)->info().kvCacheBytesPerToken);
}

INSTANTIATE_TEST_SUITE_P(DeepSeek, MlaForms,
                         ::testing::Values("deepseek-v3", "deepseek-v2",
                                           "deepseek-v2-lite",
                                           "deepseek-v3-odd",
                                           "deepseek-v2-odd"),
                         [](const auto &info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// A batch of sequences of different lengths decodes exactly as each
// sequence does alone.
TEST(Batching, MixedLengthsMatchSequencesAlone) {
  Golden golden("deepseek-v3");
  std::filesystem::path artifact =
      compile(kGolden / "deepseek-v3", freshTempDir() / "m.kiln");
  std::vector<std::vector<int32_t>> prompts = goldenPrompts(golden);
  Trace batch = trace(artifact, prompts, 16);
  for (size_t i = 0; i < prompts.size(); ++i) {
    Trace alone = trace(artifact, {prompts[i]}, 16);
    EXPECT_EQ(alone.tokens[0], batch.tokens[i]) << "sequence " << i;
    Error e;
    for (size_t r = 0; r < alone.logits[0].size(); ++r)
      e.add(batch.logits[i][r], alone.logits[0][r]);
    EXPECT_LE(e.relative(), 1e-5);
  }
}

// Without prompt logits a prefill's output head computes each sequence's
// last row alone (its input rows moved to the front first). The golden
// prompts (7, 4 and 11 tokens) in one batch, in one chunk of 16 rows each
// and in chunks of 3 (the first chunk ends no prompt and computes no head
// row; later ones move a row from the middle of the chunk): logits() match
// HF's last-position logits at the golden bound and the session with every
// position's logits to fp32 rounding (the same products summed over
// another row count), and the decode continues to the same greedy tokens.
TEST(PromptLogits, LastRowsAloneMatchEveryRow) {
  Golden golden("deepseek-v3");
  std::vector<std::vector<int32_t>> prompts = goldenPrompts(golden);
  for (uint32_t chunk : {16u, 3u}) {
    SCOPED_TRACE("prefill chunk " + std::to_string(chunk));
    testing::CompileSettings settings;
    settings.plan.maxPrefill = chunk;
    std::unique_ptr<Model> model = testing::compileAndOpen(
        kGolden / "deepseek-v3", freshTempDir() / "m.kiln", settings);
    ASSERT_TRUE(model);
    auto vocab = static_cast<size_t>(model->info().vocabSize);
    std::vector<std::vector<float>> last[2];
    std::vector<std::vector<int32_t>> greedy[2];
    for (bool every : {true, false}) {
      SessionOptions options;
      options.device = Device::Cpu;
      options.promptLogits = every;
      auto session = Session::create(*model, options);
      ASSERT_TRUE(session.ok()) << errorOf(session);
      Session &s = **session;
      absl::StatusOr<std::vector<int>> ids = s.prefill(prompts);
      ASSERT_TRUE(ids.ok()) << errorOf(ids);
      greedy[every].resize(prompts.size());
      for (size_t i = 0; i < prompts.size(); ++i) {
        std::span<const float> row = s.logits((*ids)[i]);
        last[every].emplace_back(row.begin(), row.end());
      }
      for (int step = 0; step < 4; ++step) {
        std::vector<int32_t> next;
        for (size_t i = 0; i < prompts.size(); ++i) {
          next.push_back(argmax(s.logits((*ids)[i])));
          greedy[every][i].push_back(next.back());
        }
        absl::Status st = s.decode(*ids, next);
        ASSERT_TRUE(st.ok()) << errorOf(st);
      }
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      auto hf = golden.get<float>("prefill." + std::to_string(i) + ".logits");
      size_t at = (prompts[i].size() - 1) * vocab;
      Error fromHf, fromEvery;
      fromHf.add(last[false][i], hf.subspan(at, vocab));
      fromEvery.add(last[false][i], last[true][i]);
      EXPECT_LE(fromHf.relative(), kRelativeTolerance) << "prompt " << i;
      EXPECT_LE(fromEvery.relative(), 1e-6) << "prompt " << i;
      EXPECT_EQ(argmax(last[false][i]), argmax(hf.subspan(at, vocab)));
      EXPECT_EQ(greedy[false][i], greedy[true][i]) << "prompt " << i;
    }
  }
}

// A prefill's visitor sees every prompt position once, in order, as its
// chunk computes it (chunks of 3 here: each prompt spans several, and
// promptLogits() holds the last one's alone); the rows match HF's. A
// session that computes no prompt logits refuses the visitor.
TEST(PromptLogits, VisitorSeesEveryChunksRows) {
  Golden golden("deepseek-v3");
  std::vector<std::vector<int32_t>> prompts = goldenPrompts(golden);
  testing::CompileSettings settings;
  settings.plan.maxPrefill = 3;
  std::unique_ptr<Model> model = testing::compileAndOpen(
      kGolden / "deepseek-v3", freshTempDir() / "m.kiln", settings);
  ASSERT_TRUE(model);
  auto vocab = static_cast<size_t>(model->info().vocabSize);
  SessionOptions options;
  options.device = Device::Cpu;
  auto session = Session::create(*model, options);
  ASSERT_TRUE(session.ok()) << errorOf(session);
  std::map<int, std::vector<float>> rows;
  std::map<int, size_t> seen;
  absl::StatusOr<std::vector<int>> ids = (*session)->prefill(
      prompts, [&](int sequence, size_t position, std::span<const float> row) {
        EXPECT_EQ(position, seen[sequence]++) << "sequence " << sequence;
        EXPECT_EQ(row.size(), vocab);
        rows[sequence].insert(rows[sequence].end(), row.begin(), row.end());
      });
  ASSERT_TRUE(ids.ok()) << errorOf(ids);
  ASSERT_EQ(rows.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    int id = (*ids)[i];
    EXPECT_EQ(seen[id], prompts[i].size()) << "prompt " << i;
    Error fromHf;
    fromHf.add(rows[id],
               golden.get<float>("prefill." + std::to_string(i) + ".logits"));
    EXPECT_LE(fromHf.relative(), kRelativeTolerance) << "prompt " << i;
    // The first position is in no chunk the session still holds.
    EXPECT_EQ((*session)->promptLogits(id, 0).status().code(),
              absl::StatusCode::kOutOfRange);
  }

  options.promptLogits = false;
  auto lastOnly = Session::create(*model, options);
  ASSERT_TRUE(lastOnly.ok()) << errorOf(lastOnly);
  absl::StatusOr<std::vector<int>> refused =
      (*lastOnly)->prefill(prompts, [](int, size_t, std::span<const float>) {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*lastOnly)->numSequences(), 0u);
}

// A prefill's prompt logits stay each sequence's when another sequence of
// that prefill is released (or extended) before they are read: the rows
// are the prefill's, in its order. (Releasing the first used to shift the
// others onto its rows.)
TEST(PromptLogits, HeldAcrossAnotherSequencesRelease) {
  Golden golden("deepseek-v3");
  std::filesystem::path artifact =
      compile(kGolden / "deepseek-v3", freshTempDir() / "m.kiln");
  auto model = Model::open(artifact);
  ASSERT_TRUE(model.ok()) << errorOf(model);
  std::vector<std::vector<int32_t>> prompts = goldenPrompts(golden);
  for (bool extend : {false, true}) {
    SCOPED_TRACE(extend ? "extended" : "released");
    SessionOptions options;
    options.device = Device::Cpu;
    auto session = Session::create(**model, options);
    ASSERT_TRUE(session.ok()) << errorOf(session);
    Session &s = **session;
    absl::StatusOr<std::vector<int>> ids = s.prefill(prompts);
    ASSERT_TRUE(ids.ok()) << errorOf(ids);
    // Each prompt's last position, as the prefill left it.
    std::vector<std::vector<float>> before;
    for (size_t i = 0; i < prompts.size(); ++i) {
      auto row = s.promptLogits((*ids)[i], prompts[i].size() - 1);
      ASSERT_TRUE(row.ok()) << errorOf(row);
      before.emplace_back(row->begin(), row->end());
    }
    absl::Status gone =
        extend ? s.extendUncomputed((*ids)[0], 1) : s.release((*ids)[0]);
    ASSERT_TRUE(gone.ok()) << errorOf(gone);
    EXPECT_FALSE(s.promptLogits((*ids)[0], prompts[0].size() - 1).ok());
    // Ids of no live sequence (the released one, a never-started one, a
    // negative one: the released rows' place holder) hold nothing.
    for (int id : {extend ? 99 : (*ids)[0], 99, -1}) {
      EXPECT_EQ(s.promptLogits(id, 0).status().code(),
                absl::StatusCode::kInvalidArgument)
          << id;
      EXPECT_TRUE(s.logits(id).empty()) << id;
    }
    for (size_t i = 1; i < prompts.size(); ++i) {
      auto row = s.promptLogits((*ids)[i], prompts[i].size() - 1);
      ASSERT_TRUE(row.ok()) << errorOf(row);
      EXPECT_EQ(std::vector<float>(row->begin(), row->end()), before[i])
          << "prompt " << i;
    }
  }
}

// A prefill that fails part way (its later chunks find the cache full)
// starts no sequence, leaves the others' logits as they were, and the
// prompt logits of the prefill before it are no longer held (its chunks
// overwrote them) instead of read from its rows.
TEST(PromptLogits, NotHeldAfterAPrefillThatFailedPartWay) {
  testing::CompileSettings settings;
  settings.plan.maxContext = 256;
  std::unique_ptr<Model> model = testing::compileAndOpen(
      kGolden / "qwen2", freshTempDir() / "m.kiln", settings);
  ASSERT_TRUE(model);
  SessionOptions options;
  options.device = Device::Cpu;
  options.kvBlocks = 2; // 128 tokens in all
  auto session = Session::create(*model, options);
  ASSERT_TRUE(session.ok()) << errorOf(session);
  Session &s = **session;
  auto first = s.prefill({std::vector<int32_t>(60, 7)});
  ASSERT_TRUE(first.ok()) << errorOf(first);
  int a = first->front();
  std::vector<float> last(s.logits(a).begin(), s.logits(a).end());
  ASSERT_TRUE(s.promptLogits(a, 59).ok());
  // 100 tokens in chunks of 16: the first 64 fit the free block, the
  // fifth chunk does not.
  std::vector<int32_t> prompt(100);
  for (size_t i = 0; i < prompt.size(); ++i)
    prompt[i] = static_cast<int32_t>(i % 50);
  auto second = s.prefill({prompt});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted)
      << errorOf(second);
  EXPECT_EQ(s.sequences(), std::vector<int>{a});
  EXPECT_EQ(s.promptLogits(a, 59).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(std::vector<float>(s.logits(a).begin(), s.logits(a).end()), last);
}

/// Greedy tokens of one sequence run alone: prompt, then `steps` tokens.
std::vector<int32_t> greedyAlone(const std::filesystem::path &artifact,
                                 const std::vector<int32_t> &prompt,
                                 int steps) {
  return trace(artifact, {prompt}, steps - 1).tokens[0];
}

// Continuous batching: sequences finish and are replaced mid-batch, and
// every sequence still produces exactly the tokens it produces alone.
TEST(Batching, MidBatchReplacementMatchesSequencesAlone) {
  Golden golden("deepseek-v2-lite");
  std::filesystem::path artifact =
      compile(kGolden / "deepseek-v2-lite", freshTempDir() / "m.kiln");
  std::vector<std::vector<int32_t>> prompts = goldenPrompts(golden);
  std::vector<int32_t> late = {5, 9, 200, 17, 3};

  auto model = Model::open(artifact);
  ASSERT_TRUE(model.ok()) << errorOf(model);
  auto session = Session::create(**model);
  ASSERT_TRUE(session.ok()) << errorOf(session);
  Session &s = **session;
  std::map<int, std::vector<int32_t>> produced; // id -> greedy tokens
  auto step = [&](const std::vector<int> &ids) {
    std::vector<int32_t> next;
    for (int id : ids) {
      next.push_back(argmax(s.logits(id)));
      produced[id].push_back(next.back());
    }
    absl::Status st = s.decode(ids, next);
    ASSERT_TRUE(st.ok()) << errorOf(st);
  };
  auto ids = s.prefill(prompts);
  ASSERT_TRUE(ids.ok()) << errorOf(ids);
  int a = (*ids)[0], b = (*ids)[1], c = (*ids)[2];
  for (int i = 0; i < 6; ++i)
    step({a, b, c});
  // b finishes; a new sequence takes its place (and its cache blocks).
  std::vector<int32_t> bTokens = produced[b];
  ASSERT_TRUE(s.release(b).ok());
  produced.erase(b);
  auto added = s.prefill({late});
  ASSERT_TRUE(added.ok()) << errorOf(added);
  int d = added->front();
  EXPECT_EQ(s.numSequences(), 3u);
  for (int i = 0; i < 10; ++i)
    step({a, c, d});

  EXPECT_EQ(produced[a], greedyAlone(artifact, prompts[0], 16));
  EXPECT_EQ(bTokens, greedyAlone(artifact, prompts[1], 6));
  EXPECT_EQ(produced[c], greedyAlone(artifact, prompts[2], 16));
  EXPECT_EQ(produced[d], greedyAlone(artifact, late, 10));
}

// A negative cache size is refused, naming the option (0 is the default
// size).
TEST(Batching, NegativeCacheSizeIsRefused) {
  std::filesystem::path artifact =
      compile(kGolden / "qwen2", freshTempDir() / "m.kiln");
  auto model = Model::open(artifact);
  ASSERT_TRUE(model.ok()) << errorOf(model);
  SessionOptions options;
  options.kvBlocks = -1;
  auto session = Session::create(**model, options);
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(errorOf(session), ::testing::HasSubstr("kvBlocks"));
}

// A full cache refuses new tokens with a clear error instead of
// overwriting another sequence, and accepts them again once a sequence is
// released.
TEST(Batching, OutOfCapacityIsAnErrorNotAnOverwrite) {
  std::filesystem::path artifact =
      compile(kGolden / "qwen2", freshTempDir() / "m.kiln", "auto", 0,
              /*maxContext=*/256);
  auto model = Model::open(artifact);
  ASSERT_TRUE(model.ok()) << errorOf(model);
  SessionOptions options;
  options.kvBlocks = 2; // 128 tokens in all
  auto session = Session::create(**model, options);
  ASSERT_TRUE(session.ok()) << errorOf(session);
  Session &s = **session;
  std::vector<int32_t> prompt(60, 7);
  auto first = s.prefill({prompt});
  auto second = s.prefill({prompt});
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(s.freeCacheTokens(), 0);
  // A third prompt does not fit: nothing is started.
  auto third = s.prefill({prompt});
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.numSequences(), 2u);
  // Decoding until the first sequence's block is full, then past it.
  std::vector<float> before(s.logits(second->front()).begin(),
                            s.logits(second->front()).end());
  int id = first->front();
  absl::Status st;
  for (int i = 0; i < 4; ++i) {
    int32_t token = 3;
    st = s.decode(std::span<const int>(&id, 1), {&token, 1});
    ASSERT_TRUE(st.ok()) << errorOf(st);
  }
  int32_t token = 3;
  st = s.decode(std::span<const int>(&id, 1), {&token, 1});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << errorOf(st);
  EXPECT_THAT(errorOf(st), ::testing::HasSubstr("sequence 0"));
  EXPECT_EQ(s.length(id), 64u);
  // The other sequence is untouched.
  std::vector<float> after(s.logits(second->front()).begin(),
                           s.logits(second->front()).end());
  EXPECT_EQ(before, after);
  ASSERT_TRUE(s.release(second->front()).ok());
  st = s.decode(std::span<const int>(&id, 1), {&token, 1});
  EXPECT_TRUE(st.ok()) << errorOf(st);
}

} // namespace
} // namespace kiln
