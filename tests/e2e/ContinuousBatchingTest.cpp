// Continuous batching under a random schedule (tests/runtime/RandomSchedule.h):
// sequences start, decode in changing subsets and end at random steps or
// when the cache is full, and each one's logits at every step must be
// those of its tokens run alone in a fresh CPU session. On the CPU, and on
// the emulated CUDA executor, where the batch's changing size and length
// capture and replay a graph per entry point, batch size and context
// bucket. The plan's bounds: prefill chunks of 8 tokens (most prompts take
// several; a 9-token prompt ends in a chunk of one), 4 sequences, a context
// past the GPU's first context bucket (256 tokens), and a cache smaller
// than 4 full contexts, so that the schedule fills it.
#include "tests/e2e/E2eUtil.h"
#include "tests/runtime/RandomSchedule.h"

#include "kiln/Runtime.h"

#include "gtest/gtest.h"

#include <algorithm>
#include <string>

namespace kiln {
namespace {

using frontend::testing::errorOf;
using frontend::testing::freshTempDir;

struct Case {
  std::string golden;
  Device device;
};

std::string caseName(const ::testing::TestParamInfo<Case> &info) {
  std::string name = info.param.golden +
                     (info.param.device == Device::Cpu ? "_cpu" : "_emulated");
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

constexpr uint32_t kMaxBatch = 4, kMaxPrefill = 8, kMaxContext = 320;
constexpr int64_t kCacheBlocks = 12;

class ContinuousBatching : public ::testing::TestWithParam<Case> {};

TEST_P(ContinuousBatching, RandomScheduleMatchesSequencesAlone) {
  const Case &c = GetParam();
  testing::CompileSettings settings;
  settings.plan.maxBatch = kMaxBatch;
  settings.plan.maxPrefill = kMaxPrefill;
  settings.plan.maxContext = kMaxContext;
  std::filesystem::path artifact = testing::compileArtifact(
      testing::kGolden / c.golden, freshTempDir() / "m.kiln", settings);
  ASSERT_FALSE(artifact.empty());
  absl::StatusOr<std::unique_ptr<Model>> model = Model::open(artifact);
  ASSERT_TRUE(model.ok()) << errorOf(model);
  SessionOptions options;
  options.device = c.device;
  options.kvBlocks = kCacheBlocks;
  absl::StatusOr<std::unique_ptr<Session>> session =
      Session::create(**model, options);
  if (c.device == Device::Emulated && absl::IsUnavailable(session.status()))
    GTEST_SKIP() << errorOf(session); // built without the CUDA executor
  ASSERT_TRUE(session.ok()) << errorOf(session);
  Session &s = **session;
  int64_t capacity = s.freeCacheTokens();
  ASSERT_EQ(capacity, kCacheBlocks * 64);

  testing::ScheduleRun run = testing::runRandomSchedule(
      s, static_cast<int32_t>((*model)->info().vocabSize), kMaxBatch,
      kMaxContext, /*seed=*/20261206, /*iterations=*/500);
  // Every block came back.
  EXPECT_EQ(s.freeCacheTokens(), capacity);
  // The schedule did what it is for: the cache filled up, decode steps ran
  // at every batch size, and a sequence reached the second context bucket.
  EXPECT_GT(run.refusedPrefills + run.refusedDecodes, 0);
  EXPECT_EQ(run.decodeBatches.size(), size_t{kMaxBatch});
  EXPECT_GT(run.longest, 256u);

  // The CPU alone: the same products summed in other orders (the emulated
  // device's attention splits follow the batch's size) at most.
  SessionOptions alone;
  alone.device = Device::Cpu;
  testing::expectSequencesAsAlone(**model, alone, run.sequences,
                                  c.device == Device::Cpu ? 1e-5 : 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Schedules, ContinuousBatching,
    ::testing::Values(Case{"deepseek-v2-lite", Device::Cpu},
                      Case{"deepseek-v2-lite", Device::Emulated},
                      Case{"qwen2", Device::Cpu},
                      Case{"qwen2", Device::Emulated}),
    caseName);

} // namespace
} // namespace kiln
