// The emulated CUDA executor (Device::Emulated) through a session: which
// logits a step computes and copies back, the staging and arena that holds
// them, the kernel launches a step counts and logs, the executor's
// switches, programmatic dependent launch and the kernel profile.
#include "models/InitModel.h"
#include "models/Presets.h"
#include "runtime/src/cuda/EmulatedBlasLt.h"
#include "runtime/src/cuda/EmulatedDriver.h"
#include "tests/e2e/E2eUtil.h"
#include "tests/e2e/EmulatedGpuUtil.h"
#include "tests/runtime/DeviceSteps.h"

#include "kiln/Runtime.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <numeric>
#include <span>
#include <sstream>
#include <string>
#include <vector>

namespace kiln {
namespace {

using testing::compileAndOpen;
using testing::CompileSettings;
using testing::decodeLaunches;
using testing::kGolden;
using testing::scratchFile;
using testing::writeModel;

// Without prompt logits only each sequence's last row is copied back: the
// same logits() as with them, and promptLogits() says why it has none.
TEST(EmulatedGpuSession, LastLogitsWithoutPromptLogits) {
  CompileSettings settings;
  std::unique_ptr<Model> model =
      compileAndOpen(kGolden / "deepseek-v3",
                     scratchFile("emulated_last_logits.kiln"), settings);
  ASSERT_TRUE(model);
  std::vector<std::vector<int32_t>> prompts = {{5, 17, 3, 99, 42}, {7, 7}};
  std::vector<std::vector<float>> logits[2];
  for (bool keep : {true, false}) {
    SessionOptions options;
    options.device = Device::Emulated;
    options.promptLogits = keep;
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(*model, options);
    if (absl::IsUnavailable(session.status()))
      GTEST_SKIP() << session.status().message();
    ASSERT_TRUE(session.ok()) << session.status().message();
    absl::StatusOr<std::vector<int>> ids = (*session)->prefill(prompts);
    ASSERT_TRUE(ids.ok()) << ids.status().message();
    for (int id : *ids) {
      std::span<const float> row = (*session)->logits(id);
      logits[keep].emplace_back(row.begin(), row.end());
    }
    absl::StatusOr<std::span<const float>> prompt =
        (*session)->promptLogits((*ids)[0], 1);
    EXPECT_EQ(prompt.ok(), keep);
    if (!keep) {
      EXPECT_TRUE(absl::IsFailedPrecondition(prompt.status()))
          << prompt.status();
    }
  }
  EXPECT_EQ(logits[0], logits[1]);
}

// The host's page-locked staging holds the logits a step copies back: a
// prefill chunk's [batch, seq, vocab] with prompt logits, a row per
// sequence without, and a decode step's row per sequence; nothing without
// step logits.
TEST(EmulatedGpuSession, StagingHoldsOnlyTheLogitsCopiedBack) {
  CompileSettings settings; // 4 sequences, prefill chunks of 16
  std::unique_ptr<Model> model = compileAndOpen(
      kGolden / "deepseek-v3", scratchFile("emulated_staging.kiln"), settings);
  ASSERT_TRUE(model);
  auto pinnedBy = [&](bool promptLogits, bool stepLogits) -> size_t {
    SessionOptions options;
    options.device = Device::Emulated;
    options.promptLogits = promptLogits;
    options.stepLogits = stepLogits;
    size_t before = cuda::emulatedPinnedBytes();
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(*model, options);
    EXPECT_TRUE(session.ok()) << session.status().message();
    return cuda::emulatedPinnedBytes() - before;
  };
  size_t every = pinnedBy(true, true), last = pinnedBy(false, true),
         none = pinnedBy(true, false);
  auto row = static_cast<size_t>(model->info().vocabSize) * sizeof(float);
  EXPECT_EQ(every - last, (4 * 16 - 4) * row);
  EXPECT_EQ(last - none, (4 + 4) * row);
  EXPECT_EQ(pinnedBy(false, false), none);
}

// Without prompt logits the arena holds a row of logits per sequence, not
// a prefill chunk's [batch, seq, vocab]. The tiny DeepSeek-V3 with an
// 8,192-token vocabulary, so that the logits (4 sequences x 16-token
// chunks: 2 MB) outgrow every other buffer and end the arena: the session
// allocates 60 rows of logits less device memory. Its steps stay inside
// their allocations (the emulated driver checks the bytes past each one
// when it is freed).
TEST(EmulatedGpuSession, ArenaHoldsALogitsRowPerSequenceWithoutPromptLogits) {
  nlohmann::json config =
      nlohmann::json::parse(*models::findPreset("tiny-deepseek-v3"));
  config["vocab_size"] = 8192;
  std::filesystem::path dir = writeModel(config, "wide_vocabulary", 5);
  ASSERT_FALSE(dir.empty());
  CompileSettings settings; // 4 sequences, prefill chunks of 16
  std::unique_ptr<Model> model =
      compileAndOpen(dir, scratchFile("wide_vocabulary.kiln"), settings);
  ASSERT_TRUE(model);
  std::vector<std::vector<float>> logits[2];
  auto deviceBytes = [&](bool promptLogits) -> size_t {
    SessionOptions options;
    options.device = Device::Emulated;
    options.promptLogits = promptLogits;
    size_t before = cuda::emulatedDeviceBytes();
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(*model, options);
    EXPECT_TRUE(session.ok()) << session.status().message();
    if (!session.ok())
      return 0;
    size_t bytes = cuda::emulatedDeviceBytes() - before;
    // All four end in the one chunk: its head computes four rows.
    std::vector<std::vector<int32_t>> prompts = {
        std::vector<int32_t>(16, 5), {7, 7}, {9, 8, 7, 6, 5}, {1}};
    absl::StatusOr<std::vector<int>> ids = (*session)->prefill(prompts);
    EXPECT_TRUE(ids.ok()) << ids.status().message();
    std::vector<int32_t> next(prompts.size(), 3);
    EXPECT_TRUE(ids.ok() && (*session)->decode(*ids, next).ok());
    for (int id : ids.ok() ? *ids : std::vector<int>{}) {
      std::span<const float> row = (*session)->logits(id);
      logits[promptLogits].emplace_back(row.begin(), row.end());
    }
    return bytes;
  };
  size_t every = deviceBytes(true), last = deviceBytes(false);
  EXPECT_EQ(every - last, (4 * 16 - 4) * size_t{8192} * sizeof(float));
  EXPECT_EQ(logits[0], logits[1]);
}

// Without prompt logits a prefill's output head computes each sequence's
// last row alone. Llama's golden (bf16 weights) with emulated cuBLASLt and
// prompts of 16, 9 and 12 tokens (one chunk of 3 x 16 rows, so that the
// last rows move to the front of the head's input): with prompt logits
// cuBLASLt takes the head's 48 rows, without them the head's 3 rows are
// below its 16 and go to a library GEMM. logits() agree with the CPU
// session's (every row computed) within the bf16 bound (cuBLASLt reads bf16
// rows, the library GEMM f32), with and without.
TEST(EmulatedGpuSession, PrefillHeadComputesTheLastRowsAlone) {
  CompileSettings settings;
  std::unique_ptr<Model> model = compileAndOpen(
      kGolden / "llama-bf16", scratchFile("emulated_last_rows.kiln"), settings);
  ASSERT_TRUE(model);
  std::vector<int32_t> prompt(16);
  std::iota(prompt.begin(), prompt.end(), 3);
  std::vector<std::vector<int32_t>> prompts = {
      prompt,
      {prompt.begin(), prompt.begin() + 9},
      {prompt.rbegin() + 4, prompt.rend()}};
  auto lastLogits = [&](Device device, bool promptLogits, int64_t &gemms) {
    std::vector<std::vector<float>> rows;
    ::setenv("KILN_EMULATE_CUBLASLT", "1", 1);
    SessionOptions options;
    options.device = device;
    options.promptLogits = promptLogits;
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(*model, options);
    ::unsetenv("KILN_EMULATE_CUBLASLT");
    EXPECT_TRUE(session.ok()) << session.status().message();
    if (!session.ok())
      return rows;
    gemms = cuda::emulatedBlasLtCalls().bf16;
    absl::StatusOr<std::vector<int>> ids = (*session)->prefill(prompts);
    EXPECT_TRUE(ids.ok()) << ids.status().message();
    gemms = cuda::emulatedBlasLtCalls().bf16 - gemms;
    for (int id : ids.ok() ? *ids : std::vector<int>{}) {
      std::span<const float> row = (*session)->logits(id);
      rows.emplace_back(row.begin(), row.end());
    }
    return rows;
  };
  int64_t cpuGemms = 0, allRows = 0, lastRows = 0;
  std::vector<std::vector<float>> cpu = lastLogits(Device::Cpu, true, cpuGemms);
  std::vector<std::vector<float>> every =
      lastLogits(Device::Emulated, true, allRows);
  std::vector<std::vector<float>> last =
      lastLogits(Device::Emulated, false, lastRows);
  EXPECT_EQ(cpuGemms, 0);
  // Per layer 7 GEMMs (q, k, v, o, gate, up, down), then the head's.
  EXPECT_EQ(allRows, 2 * 7 + 1);
  EXPECT_EQ(lastRows, 2 * 7);
  testing::expectSameSteps(cpu, every, 1e-2f);
  testing::expectSameSteps(cpu, last, 1e-2f);
}

// cuBLASLt GEMMs read bf16 rows, which the executor converts from f32:
// once for the GEMMs of one input that run one after another, a linear
// group's members run one by one (a layer's q, k and v) and a gated FFN's
// two projections. Llama's golden (2 layers, bf16 weights), one prefill of
// 3 x 16 rows (one chunk), which cuBLASLt takes: per layer 7 GEMMs from 4
// conversions (q/k/v, o_proj, gate/up, down), plus the output head's own.
TEST(EmulatedGpuSession, LibraryGemmsOfOneInputShareItsBf16Rows) {
  CompileSettings settings;
  std::unique_ptr<Model> model =
      compileAndOpen(kGolden / "llama-bf16",
                     scratchFile("emulated_shared_bf16.kiln"), settings);
  ASSERT_TRUE(model);
  ::setenv("KILN_EMULATE_CUBLASLT", "1", 1);
  SessionOptions options;
  options.device = Device::Emulated;
  absl::StatusOr<std::unique_ptr<Session>> session =
      Session::create(*model, options);
  ::unsetenv("KILN_EMULATE_CUBLASLT");
  ASSERT_TRUE(session.ok()) << session.status().message();
  int64_t conversions = cuda::emulatedLaunches("kiln_to_bf16");
  int64_t gemms = cuda::emulatedBlasLtCalls().bf16;
  std::vector<int32_t> prompt(16);
  std::iota(prompt.begin(), prompt.end(), 3);
  ASSERT_TRUE((*session)->prefill({prompt, prompt, prompt}).ok());
  conversions = cuda::emulatedLaunches("kiln_to_bf16") - conversions;
  gemms = cuda::emulatedBlasLtCalls().bf16 - gemms;
  EXPECT_EQ(gemms, 2 * 7 + 1);
  EXPECT_EQ(conversions, 2 * 4 + 1);
}

// The launch counter counts replayed graphs as their kernels, none on the
// CPU; each linear group (a pair here: q_a_proj with kv_a_proj_with_mqa,
// and in MoE layers the routed with the shared experts' gated and down
// GEMMs) is one launch fewer.
TEST(EmulatedGpuSession, KernelLaunchesCountEveryStep) {
  EXPECT_EQ(decodeLaunches(Device::Cpu, {}, "grouped"),
            (std::vector<int64_t>{0, 0, 0}));
  size_t groups = 0;
  std::vector<int64_t> grouped =
      decodeLaunches(Device::Emulated, {}, "grouped", &groups);
  CompileSettings ungrouped;
  ungrouped.optimize.groupLinears = false;
  std::vector<int64_t> apart =
      decodeLaunches(Device::Emulated, ungrouped, "ungrouped");
  ASSERT_EQ(grouped.size(), 3u);
  ASSERT_EQ(apart.size(), 3u);
  EXPECT_GT(grouped[0], 0);
  EXPECT_EQ(grouped[1], grouped[0]);
  EXPECT_EQ(grouped[2], grouped[0]);
  // 3 layers, 2 of them MoE.
  EXPECT_EQ(groups, 3u + 2 * 2);
  EXPECT_EQ(apart[0] - grouped[0], static_cast<int64_t>(groups));
}

// Three sequences of V2-Lite's bf16 golden: the tensor-core GEMM takes
// the q and latent projections (3 rows) and the shared experts (every
// token), the GEMV the routed experts' selections. Each group is still one
// launch, members on the tensor cores beside GEMVs (kiln_gemm_group_*).
TEST(EmulatedGpuSession, GroupsOfAFewTokensAreOneLaunch) {
  int64_t plain = cuda::emulatedLaunches("kiln_gemm_group_bf16"),
          gated = cuda::emulatedLaunches("kiln_gemm_group_gated_bf16");
  size_t groups = 0;
  std::vector<int64_t> grouped =
      decodeLaunches(Device::Emulated, {}, "v2lite_grouped_3", &groups, 3,
                     "deepseek-v2-lite-bf16");
  CompileSettings ungrouped;
  ungrouped.optimize.groupLinears = false;
  std::vector<int64_t> apart =
      decodeLaunches(Device::Emulated, ungrouped, "v2lite_ungrouped_3", nullptr,
                     3, "deepseek-v2-lite-bf16");
  ASSERT_EQ(grouped.size(), 3u);
  ASSERT_EQ(apart.size(), 3u);
  // 3 layers, 2 of them MoE.
  EXPECT_EQ(groups, 3u + 2 * 2);
  EXPECT_EQ(apart[0] - grouped[0], static_cast<int64_t>(groups));
  // The prefill (9 rows) and each decode step: the q and latent projections
  // of each layer and the MoE layers' down projections; their gated GEMMs.
  EXPECT_EQ(cuda::emulatedLaunches("kiln_gemm_group_bf16") - plain, 4 * 5);
  EXPECT_EQ(cuda::emulatedLaunches("kiln_gemm_group_gated_bf16") - gated,
            4 * 2);
}

// KILN_LOG_LAUNCHES=1 logs each launch as it is made: the captured decode
// step once, a line per kernel it counts, then none while the graph
// replays.
TEST(EmulatedGpuSession, LaunchLogListsTheCapturedStep) {
  ::setenv("KILN_LOG_LAUNCHES", "1", 1);
  ::testing::internal::CaptureStderr();
  std::vector<int64_t> launches =
      decodeLaunches(Device::Emulated, {}, "grouped");
  std::string log = ::testing::internal::GetCapturedStderr();
  ::unsetenv("KILN_LOG_LAUNCHES");
  ASSERT_EQ(launches.size(), 3u);
  int64_t captured = 0, run = 0;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("kiln: launch ", 0) == 0)
      ++(line.find(" (captured)") != std::string::npos ? captured : run);
  EXPECT_EQ(captured, launches[0]);
  EXPECT_GT(run, 0); // the prefill, not captured
  // A step of one sequence (top-4: 4 selections) runs its grouped GEMVs in
  // selection order, with no route launch.
  EXPECT_EQ(log.find("kiln: launch kiln_moe_route grid 1,1,1 (captured)"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("kiln: launch kiln_gemv_group_gated_f32 grid"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("_moe_combine_add_rms_norm grid 1,1,1 (captured)"),
            std::string::npos)
      << log;
}

// The executor's switches say which values they take.
TEST(EmulatedGpuSession, UnknownSwitchValuesAreRefused) {
  CompileSettings settings;
  std::unique_ptr<Model> model = compileAndOpen(
      kGolden / "deepseek-v3", scratchFile("emulated_switches.kiln"), settings);
  ASSERT_TRUE(model);
  SessionOptions options;
  options.device = Device::Emulated;
  for (auto [name, expected] :
       {std::pair<const char *, const char *>{"KILN_MMA_GEMMS",
                                              "expected auto, on or off"},
        {"KILN_MMA_ATTENTION", "expected auto, on or off"},
        {"KILN_PDL", "expected auto, on or off"},
        {"KILN_LOG_LAUNCHES", "expected 0 or 1"},
        {"KILN_CUDA_GRAPHS", "expected on or off"},
        {"KILN_EMULATE_CUBLASLT", "expected 0, 1 or decline"},
        {"KILN_EXPERT_GEMMS", "expected auto, per-expert or grouped"},
        {"KILN_EXPERT_STREAMS", "expected a count from 0 to 16"},
        {"KILN_MOE_SELECTIONS", "expected auto or off"},
        {"KILN_PREFETCH", "expected on or off"}}) {
    ::setenv(name, "sometimes", 1);
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(*model, options);
    ::unsetenv(name);
    if (absl::IsUnavailable(session.status()))
      GTEST_SKIP() << session.status().message();
    ASSERT_FALSE(session.ok()) << name;
    EXPECT_TRUE(absl::IsInvalidArgument(session.status())) << session.status();
    std::string message(session.status().message());
    EXPECT_NE(
        message.find(std::string(name) + " is \"sometimes\"; " + expected),
        std::string::npos)
        << message;
  }
}

// Programmatic dependent launch: on by default on the (sm_90) emulated
// device, every kernel then launched through cuLaunchKernelEx with the
// attribute; KILN_PDL=off launches plainly. Same steps either way, bit for
// bit (the same kernels in the same order), so the launch configuration's
// grids are the plain launches' grids.
TEST(EmulatedGpuSession, ProgrammaticLaunchByDefaultOrOff) {
  CompileSettings settings;
  std::unique_ptr<Model> model = compileAndOpen(
      kGolden / "deepseek-v2-lite", scratchFile("emulated_pdl.kiln"), settings);
  ASSERT_TRUE(model);
  std::vector<std::vector<float>> steps[2];
  for (int off : {0, 1}) {
    if (off)
      ::setenv("KILN_PDL", "off", 1);
    int64_t before = cuda::emulatedProgrammaticLaunches();
    std::string where;
    steps[off] = testing::runDeviceSteps(*model, Device::Emulated, where);
    ::unsetenv("KILN_PDL");
    int64_t programmatic = cuda::emulatedProgrammaticLaunches() - before;
    bool described =
        where.find("programmatic dependent launch") != std::string::npos;
    if (off) {
      EXPECT_EQ(programmatic, 0);
      EXPECT_FALSE(described) << where;
    } else {
      EXPECT_GT(programmatic, 0);
      EXPECT_TRUE(described) << where;
    }
  }
  ASSERT_FALSE(steps[0].empty());
  EXPECT_EQ(steps[0], steps[1]);
}

// A prefill chunk of one token per sequence is a step the executor
// captures and replays as a graph, as a decode step: the prefill's graph,
// not the decode's of the same batch size and context bucket (they were
// one, keyed by those two: the chunk replayed the decode's launches over
// the prefill's inputs, or a later decode the prefill's). Qwen2's golden
// in chunks of 8, where a 9-token prompt ends in a 1-token chunk and a
// 1-token prompt is one: after a decode step, and before one; the logits
// of every step as the CPU's.
TEST(EmulatedGpuSession, OneTokenPrefillChunksReplayThePrefillsGraph) {
  CompileSettings settings;
  settings.plan.maxPrefill = 8;
  std::unique_ptr<Model> model =
      compileAndOpen(kGolden / "qwen2",
                     scratchFile("emulated_one_token_chunks.kiln"), settings);
  ASSERT_TRUE(model);
  std::vector<std::vector<float>> steps[2];
  for (Device device : {Device::Cpu, Device::Emulated}) {
    SessionOptions options;
    options.device = device;
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(*model, options);
    ASSERT_TRUE(session.ok()) << session.status().message();
    Session &s = **session;
    std::vector<std::vector<float>> &out = steps[device == Device::Emulated];
    auto keep = [&](const std::vector<int> &ids) {
      for (int id : ids)
        out.emplace_back(s.logits(id).begin(), s.logits(id).end());
    };
    absl::StatusOr<std::vector<int>> first = s.prefill({{3, 4, 5, 6, 7}});
    ASSERT_TRUE(first.ok()) << first.status().message();
    for (int32_t token : {11, 12}) {
      ASSERT_TRUE(s.decode(*first, std::span(&token, 1)).ok());
      keep(*first);
    }
    absl::StatusOr<std::vector<int>> nine =
        s.prefill({{40, 39, 38, 37, 36, 35, 34, 33, 32}});
    ASSERT_TRUE(nine.ok()) << nine.status().message();
    keep(*nine);
    absl::StatusOr<std::vector<int>> one = s.prefill({{21}});
    ASSERT_TRUE(one.ok()) << one.status().message();
    keep(*one);
    std::vector<int> all = {first->front(), nine->front(), one->front()};
    for (int32_t token : {13, 14}) {
      ASSERT_TRUE(s.decode(all, std::vector<int32_t>(3, token)).ok());
      keep(all);
    }
  }
  testing::expectSameSteps(steps[0], steps[1], 1e-4f);
}

// Without step logits nothing is copied back: the steps still run and
// lengthen the sequences, logits() is empty and promptLogits() refused, on
// either device.
TEST(EmulatedGpuSession, StepsWithoutLogits) {
  CompileSettings settings;
  std::unique_ptr<Model> model =
      compileAndOpen(kGolden / "deepseek-v3",
                     scratchFile("emulated_no_logits.kiln"), settings);
  ASSERT_TRUE(model);
  for (Device device : {Device::Emulated, Device::Cpu}) {
    SessionOptions options;
    options.device = device;
    options.stepLogits = false;
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(*model, options);
    if (absl::IsUnavailable(session.status()))
      GTEST_SKIP() << session.status().message();
    ASSERT_TRUE(session.ok()) << session.status().message();
    Session &s = **session;
    absl::StatusOr<std::vector<int>> ids = s.prefill({{5, 17, 3}, {7, 7}});
    ASSERT_TRUE(ids.ok()) << ids.status().message();
    std::vector<int32_t> next = {1, 2};
    ASSERT_TRUE(s.decode(*ids, next).ok());
    for (int id : *ids) {
      EXPECT_TRUE(s.logits(id).empty());
      EXPECT_EQ(s.length(id), id == (*ids)[0] ? 4u : 3u);
      EXPECT_TRUE(absl::IsFailedPrecondition(s.promptLogits(id, 0).status()));
    }
  }
}

int64_t profiledLaunches(const std::vector<KernelTime> &profile) {
  int64_t launches = 0;
  for (const KernelTime &t : profile)
    launches += t.launches;
  return launches;
}

// The kernel profile times every launch a step counts, once, the longest
// first, while it is on; the hold before a profiled step is nobody's
// kernel. Profiled decode steps run without the graph and launch what its
// replay runs; off again, the steps replay the graph and time nothing. On
// the CPU it times kernel kinds.
TEST(EmulatedGpuSession, KernelProfileTimesEachLaunch) {
  std::unique_ptr<Model> model =
      compileAndOpen(kGolden / "deepseek-v3",
                     scratchFile("emulated_profile.kiln"), CompileSettings{});
  ASSERT_TRUE(model);
  SessionOptions options;
  options.device = Device::Emulated;
  absl::StatusOr<std::unique_ptr<Session>> session =
      Session::create(*model, options);
  if (absl::IsUnavailable(session.status()))
    GTEST_SKIP() << session.status().message();
  ASSERT_TRUE(session.ok()) << session.status().message();
  Session &s = **session;
  absl::StatusOr<std::vector<int>> ids = s.prefill({{5, 17, 3}, {7, 7}});
  ASSERT_TRUE(ids.ok()) << ids.status().message();
  EXPECT_TRUE(s.kernelProfile().empty()) << "off by default";
  std::vector<int32_t> next = {1, 2};
  int64_t before = s.kernelLaunches();
  ASSERT_TRUE(s.decode(*ids, next).ok());
  int64_t replayed = s.kernelLaunches() - before;
  ASSERT_GT(replayed, 0);

  s.setKernelProfiling(true);
  ::setenv("KILN_LOG_LAUNCHES", "1", 1);
  ::testing::internal::CaptureStderr();
  before = s.kernelLaunches();
  absl::StatusOr<std::vector<int>> more = s.prefill({{9, 4, 4, 2}});
  ASSERT_TRUE(more.ok()) << more.status().message();
  std::vector<KernelTime> prefill = s.kernelProfile();
  EXPECT_EQ(profiledLaunches(prefill), s.kernelLaunches() - before);
  s.resetKernelProfile();
  ASSERT_TRUE(s.release(more->front()).ok());
  before = s.kernelLaunches();
  for (int step = 0; step < 2; ++step)
    ASSERT_TRUE(s.decode(*ids, next).ok());
  std::string log = ::testing::internal::GetCapturedStderr();
  ::unsetenv("KILN_LOG_LAUNCHES");
  std::vector<KernelTime> decode = s.kernelProfile();
  EXPECT_EQ(profiledLaunches(decode), s.kernelLaunches() - before);
  EXPECT_EQ(profiledLaunches(decode), 2 * replayed);
  EXPECT_EQ(log.find("(captured)"), std::string::npos)
      << "profiled steps run without graphs:\n"
      << log;
  for (const std::vector<KernelTime> *profile : {&prefill, &decode}) {
    ASSERT_FALSE(profile->empty());
    for (size_t i = 0; i < profile->size(); ++i) {
      const KernelTime &t = (*profile)[i];
      EXPECT_NE(t.kernel, "kiln_hold");
      EXPECT_NE(t.kernel, "");
      EXPECT_GT(t.launches, 0) << t.kernel;
      EXPECT_GE(t.seconds, 0.0) << t.kernel;
      if (i) {
        EXPECT_LE(t.seconds, (*profile)[i - 1].seconds) << t.kernel;
      }
    }
  }
  auto timed = [&](const std::string &kernel) {
    for (const KernelTime &t : decode)
      if (t.kernel == kernel)
        return t.launches;
    return int64_t{0};
  };
  // Two sequences of top-4: 8 selections a step, which the grouped GEMVs
  // take in selection order, with no route launch.
  EXPECT_EQ(timed("kiln_moe_route"), 0);
  // Weight bytes where known: every GEMM.
  int64_t gemmBytes = 0;
  for (const KernelTime &t : decode) {
    if (t.kernel.rfind("kiln_gemv_", 0) == 0 ||
        t.kernel.rfind("kiln_gemm_", 0) == 0)
      gemmBytes = std::max(gemmBytes, t.weightBytes);
    else
      EXPECT_EQ(t.weightBytes, -1) << t.kernel;
  }
  EXPECT_GT(gemmBytes, 0);
  // The dense layer's gated FFN: gate and up, 128 x 64 f32 each.
  for (const KernelTime &t : decode)
    if (t.kernel == "kiln_gemv_gated_f32") {
      EXPECT_EQ(t.weightBytes, t.launches * 2 * 128 * 64 * 4);
    }
  EXPECT_EQ(timed("kiln_gemv_gated_f32"), 2); // one a step
  // Each MoE layer's routed (a selection's block reads its expert's gate
  // and up, 32 x 64 f32 each) and shared experts' (one of 32 x 64) gated
  // GEMMs in one launch.
  for (const KernelTime &t : decode)
    if (t.kernel == "kiln_gemv_group_gated_f32") {
      EXPECT_EQ(t.weightBytes, t.launches * (8 + 1) * 2 * 32 * 64 * 4);
    }
  EXPECT_EQ(timed("kiln_gemv_group_gated_f32"), 4); // two a step

  s.setKernelProfiling(false);
  s.resetKernelProfile();
  before = s.kernelLaunches();
  ASSERT_TRUE(s.decode(*ids, next).ok());
  EXPECT_EQ(s.kernelLaunches() - before, replayed);
  EXPECT_TRUE(s.kernelProfile().empty());

  options.device = Device::Cpu;
  absl::StatusOr<std::unique_ptr<Session>> cpu =
      Session::create(*model, options);
  ASSERT_TRUE(cpu.ok()) << cpu.status().message();
  (*cpu)->setKernelProfiling(true);
  ASSERT_TRUE((*cpu)->prefill({{5, 17, 3}}).ok());
  std::vector<KernelTime> kinds = (*cpu)->kernelProfile();
  ASSERT_FALSE(kinds.empty());
  bool moeGate = false;
  for (const KernelTime &t : kinds)
    moeGate |= t.kernel == "fused (generated)" || t.kernel == "MoeGate";
  EXPECT_TRUE(moeGate);
  (*cpu)->resetKernelProfile();
  EXPECT_TRUE((*cpu)->kernelProfile().empty());
}

// KILN_PROFILE=1 profiles a session from its start and prints the profile
// at its end. The profiled steps are the unprofiled ones to the bit, with
// the per-expert cuBLASLt GEMMs a prefill spreads over side streams run on
// the executor's one stream, where events time them.
TEST(EmulatedGpuSession, ProfiledStepsAreTheSameSteps) {
  std::unique_ptr<Model> model =
      compileAndOpen(kGolden / "deepseek-v2-lite-bf16",
                     scratchFile("emulated_profile_bf16.kiln"), {});
  ASSERT_TRUE(model);
  ::setenv("KILN_EMULATE_CUBLASLT", "1", 1);
  ::setenv("KILN_EXPERT_GEMMS", "per-expert", 1);
  ::setenv("KILN_LOG_LAUNCHES", "1", 1);
  std::vector<std::vector<float>> steps[2];
  std::string logs[2];
  for (int profiled : {0, 1}) {
    if (profiled)
      ::setenv("KILN_PROFILE", "1", 1);
    ::testing::internal::CaptureStderr();
    std::string where;
    steps[profiled] = testing::runDeviceSteps(*model, Device::Emulated, where);
    logs[profiled] = ::testing::internal::GetCapturedStderr();
    ::unsetenv("KILN_PROFILE");
  }
  for (const char *name :
       {"KILN_EMULATE_CUBLASLT", "KILN_EXPERT_GEMMS", "KILN_LOG_LAUNCHES"})
    ::unsetenv(name);
  ASSERT_FALSE(steps[0].empty());
  EXPECT_EQ(steps[0], steps[1]);
  EXPECT_NE(logs[0].find("(expert stream)"), std::string::npos) << logs[0];
  EXPECT_NE(logs[0].find("(captured)"), std::string::npos) << logs[0];
  EXPECT_EQ(logs[0].find("kiln profile"), std::string::npos) << logs[0];
  EXPECT_EQ(logs[1].find("(expert stream)"), std::string::npos) << logs[1];
  EXPECT_EQ(logs[1].find("(captured)"), std::string::npos) << logs[1];
  size_t printed = logs[1].find("kiln profile (seconds, launches, kernel):");
  ASSERT_NE(printed, std::string::npos) << logs[1];
  EXPECT_NE(logs[1].find("  cuBLASLt bf16 GEMM", printed), std::string::npos)
      << logs[1].substr(printed);
  EXPECT_NE(logs[1].find("  kiln_moe_route", printed), std::string::npos)
      << logs[1].substr(printed);
}

} // namespace
} // namespace kiln
