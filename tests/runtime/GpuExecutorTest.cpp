// The CUDA executor on a real GPU against the CPU executor, on the artifacts
// scripts/gpu-prepare.sh compiles (every architecture's golden checkpoint;
// naive and absorbed MLA; FP8 weights with an FP8 latent cache; prefill in
// chunks; decode batches of 20): the steps of tests/runtime/DeviceSteps.h
// (the GPU's prefills compute each sequence's last logits alone, the CPU's
// every position's), logits within each artifact's tolerance (its manifest
// entry: fp32 summation order for f32 weights, bf16 resolution where cuBLASLt
// rounds activations to bf16 or FP8 codes may round apart). The CPU executor is
// checked against Hugging Face in tests/e2e/GoldenTest.cpp.
//
// Runtime-only (no MLIR), so that it runs on a GPU machine without the
// compiler: KILN_GPU_BUNDLE names the bundle. Without a GPU the test is
// skipped, saying why (label gpu).
#include "runtime/src/cuda/CudaDriver.h"
#include "tests/runtime/DeviceSteps.h"
#include "tests/runtime/RandomSchedule.h"

#include "kiln/Runtime.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace kiln {
namespace {

/// The device the tests run on: the GPU, or with KILN_GPU_TESTS_EMULATE=1
/// the emulated driver, to check a bundle on the build machine before a
/// GPU is spent. Unavailable, saying why, where there is no GPU.
absl::StatusOr<Device> testDevice() {
  const char *emulate = std::getenv("KILN_GPU_TESTS_EMULATE");
  if (emulate && std::string(emulate) == "1")
    return Device::Emulated;
  absl::StatusOr<cuda::Driver> driver = cuda::Driver::load();
  if (!driver.ok())
    return absl::UnavailableError("no CUDA here: " +
                                  std::string(driver.status().message()));
  absl::StatusOr<std::vector<cuda::DeviceInfo>> devices = driver->devices();
  if (!devices.ok() || devices->empty())
    return absl::UnavailableError("the NVIDIA driver sees no GPU");
  return Device::Cuda;
}

/// The bundle KILN_GPU_BUNDLE names and its manifest's non-empty `list`.
std::filesystem::path bundleRoot() {
  const char *bundle = std::getenv("KILN_GPU_BUNDLE");
  EXPECT_NE(bundle, nullptr)
      << "set KILN_GPU_BUNDLE to the folder scripts/gpu-prepare.sh makes";
  return bundle ? std::filesystem::path(bundle) : std::filesystem::path();
}
nlohmann::json manifestList(const std::filesystem::path &root,
                            const std::string &list) {
  std::ifstream in(root / "manifest.json");
  EXPECT_TRUE(in) << root / "manifest.json";
  nlohmann::json manifest = nlohmann::json::parse(in, nullptr, false);
  EXPECT_FALSE(manifest.is_discarded()) << "manifest.json is not JSON";
  bool listed = !manifest.is_discarded() && manifest.contains(list) &&
                manifest[list].is_array() && !manifest[list].empty();
  EXPECT_TRUE(listed) << "manifest.json lists no artifacts under \"" << list
                      << "\"";
  return listed ? manifest[list] : nlohmann::json::array();
}

TEST(GpuExecutor, MatchesTheCpuExecutor) {
  absl::StatusOr<Device> device = testDevice();
  if (!device.ok())
    GTEST_SKIP() << device.status().message();
  std::filesystem::path root = bundleRoot();
  ASSERT_FALSE(root.empty());
  for (const nlohmann::json &entry : manifestList(root, "compare")) {
    std::string name = entry.value("name", "");
    SCOPED_TRACE(name);
    // An entry may run another's artifact under its own environment (e.g.
    // KILN_EXPERT_GEMMS), read when the device session is made.
    std::string artifact = entry.value("artifact", name);
    absl::StatusOr<std::unique_ptr<Model>> model =
        Model::open(root / "artifacts" / "compare" / (artifact + ".kiln"));
    ASSERT_TRUE(model.ok()) << model.status().message();
    std::vector<std::string> variables;
    if (entry.contains("env") && entry["env"].is_object())
      for (const auto &[variable, value] : entry["env"].items()) {
        ::setenv(variable.c_str(), value.get<std::string>().c_str(), 1);
        variables.push_back(variable);
      }
    // "sequences": that many three-token prompts (a decode batch of 16+
    // rows puts cuBLASLt's GEMMs inside the decode graph), else the ragged
    // three of DeviceSteps.h.
    std::vector<std::vector<int32_t>> prompts =
        entry.contains("sequences")
            ? testing::widePrompts(entry["sequences"].get<int32_t>())
            : testing::raggedPrompts();
    std::string cpuWhere, gpuWhere;
    std::vector<std::vector<float>> cpu = testing::runDeviceSteps(
        **model, Device::Cpu, cpuWhere, nullptr, prompts);
    std::vector<std::vector<float>> gpu =
        testing::runDeviceSteps(**model, *device, gpuWhere, &cpu, prompts);
    for (const std::string &variable : variables)
      ::unsetenv(variable.c_str());
    std::printf("%s: %s\n", name.c_str(), gpuWhere.c_str());
    EXPECT_EQ(gpuWhere.rfind("cuda", 0), 0u) << gpuWhere;
    testing::expectSameSteps(cpu, gpu, entry.value("tolerance", 1e-3f));
  }
}

// Continuous batching on the device under the random schedule of
// RandomSchedule.h (tests/e2e/ContinuousBatchingTest.cpp runs it on the CPU
// and the emulated device): each sequence's logits at every step against
// its tokens alone on the CPU, within the entry's tolerance, for the
// manifest's "schedules" (artifacts compiled with the bounds each names).
TEST(GpuExecutor, RandomScheduleMatchesSequencesAlone) {
  absl::StatusOr<Device> device = testDevice();
  if (!device.ok())
    GTEST_SKIP() << device.status().message();
  std::filesystem::path root = bundleRoot();
  ASSERT_FALSE(root.empty());
  for (const nlohmann::json &entry : manifestList(root, "schedules")) {
    std::string name = entry.value("name", "");
    SCOPED_TRACE(name);
    absl::StatusOr<std::unique_ptr<Model>> model =
        Model::open(root / "artifacts" / "compare" / (name + ".kiln"));
    ASSERT_TRUE(model.ok()) << model.status().message();
    SessionOptions options;
    options.device = *device;
    options.kvBlocks = entry.value("cache_blocks", int64_t{0});
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(**model, options);
    ASSERT_TRUE(session.ok()) << session.status().message();
    Session &s = **session;
    std::printf("%s: %s\n", name.c_str(), s.device().c_str());
    int64_t capacity = s.freeCacheTokens();
    testing::ScheduleRun run = testing::runRandomSchedule(
        s, static_cast<int32_t>((*model)->info().vocabSize),
        entry.value("max_batch", size_t{4}),
        entry.value("max_context", size_t{320}), /*seed=*/20261206,
        /*iterations=*/500);
    EXPECT_EQ(s.freeCacheTokens(), capacity);
    std::printf("%s: %zu sequences, the longest %zu tokens, %d refusals for "
                "want of cache\n",
                name.c_str(), run.sequences.size(), run.longest,
                run.refusedPrefills + run.refusedDecodes);
    SessionOptions alone;
    alone.device = Device::Cpu;
    testing::expectSequencesAsAlone(**model, alone, run.sequences,
                                    entry.value("tolerance", 1e-3));
  }
}

} // namespace
} // namespace kiln
