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

#include "kiln/Runtime.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace kiln {
namespace {

TEST(GpuExecutor, MatchesTheCpuExecutor) {
  // KILN_GPU_TESTS_EMULATE=1 runs the same comparison through the emulated
  // driver, to check a bundle on the build machine before a GPU is spent.
  const char *emulate = std::getenv("KILN_GPU_TESTS_EMULATE");
  Device device =
      emulate && std::string(emulate) == "1" ? Device::Emulated : Device::Cuda;
  if (device == Device::Cuda) {
    absl::StatusOr<cuda::Driver> driver = cuda::Driver::load();
    if (!driver.ok())
      GTEST_SKIP() << "no CUDA here: " << driver.status().message();
    absl::StatusOr<std::vector<cuda::DeviceInfo>> devices = driver->devices();
    if (!devices.ok() || devices->empty())
      GTEST_SKIP() << "the NVIDIA driver sees no GPU";
  }
  const char *bundle = std::getenv("KILN_GPU_BUNDLE");
  ASSERT_NE(bundle, nullptr)
      << "set KILN_GPU_BUNDLE to the folder scripts/gpu-prepare.sh makes";
  std::filesystem::path root(bundle);
  std::ifstream in(root / "manifest.json");
  ASSERT_TRUE(in) << root / "manifest.json";
  nlohmann::json manifest = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(manifest.is_discarded()) << "manifest.json is not JSON";
  ASSERT_TRUE(manifest.contains("compare") && manifest["compare"].is_array() &&
              !manifest["compare"].empty())
      << "manifest.json lists no artifacts under \"compare\"";
  for (const nlohmann::json &entry : manifest["compare"]) {
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
        testing::runDeviceSteps(**model, device, gpuWhere, &cpu, prompts);
    for (const std::string &variable : variables)
      ::unsetenv(variable.c_str());
    std::printf("%s: %s\n", name.c_str(), gpuWhere.c_str());
    EXPECT_EQ(gpuWhere.rfind("cuda", 0), 0u) << gpuWhere;
    testing::expectSameSteps(cpu, gpu, entry.value("tolerance", 1e-3f));
  }
}

} // namespace
} // namespace kiln
