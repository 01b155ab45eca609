// Shared by the emulated-GPU tests (EmulatedGpuTest.cpp and the
// Emulated*Test.cpp beside it): scratch files, random models, and the
// kernel launches a session's decode steps count.
#ifndef KILN_TESTS_E2E_EMULATEDGPUUTIL_H
#define KILN_TESTS_E2E_EMULATEDGPUUTIL_H

#include "models/InitModel.h"
#include "tests/e2e/E2eUtil.h"

#include "kiln/Runtime.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace kiln::testing {

/// `name` in this test program's own directory (removed when it ends).
inline std::string scratchFile(const std::string &name) {
  return (frontend::testing::programTempDir() / name).string();
}

/// A model directory written from `config` with seeded random f32 weights
/// (as `kiln init-model`) under the run's scratch directory; empty (with a
/// failure recorded) when it cannot be written.
inline std::filesystem::path writeModel(const nlohmann::json &config,
                                        const std::string &name,
                                        uint64_t seed) {
  mlir::MLIRContext context;
  models::InitModelOptions init;
  init.configJson = config.dump();
  init.configName = name;
  init.seed = seed;
  init.outputDir = scratchFile(name);
  init.dtype = frontend::DType::F32;
  absl::Status written = models::initModel(context, init);
  EXPECT_TRUE(written.ok()) << written.message();
  return written.ok() ? std::filesystem::path(init.outputDir)
                      : std::filesystem::path();
}

/// Kernel launches each of three decode steps of `sequences` sequences runs
/// (Session::kernelLaunches), the first captured into a graph and the
/// others replaying it; `golden` compiled with `settings` (to an artifact
/// named after `name`).
inline std::vector<int64_t>
decodeLaunches(Device device, const CompileSettings &settings,
               const std::string &name, size_t *linearGroups = nullptr,
               int32_t sequences = 1,
               const std::string &golden = "deepseek-v3") {
  std::filesystem::path artifact = compileArtifact(
      kGolden / golden, scratchFile("emulated_launches_" + name + ".kiln"),
      settings);
  if (artifact.empty())
    return {};
  absl::StatusOr<std::unique_ptr<Model>> model = Model::open(artifact);
  EXPECT_TRUE(model.ok()) << model.status().message();
  if (model.ok() && linearGroups)
    for (const EntryPointInfo &e : (*model)->info().entryPoints)
      if (e.name == "decode")
        *linearGroups = e.linearGroups;
  SessionOptions options;
  options.device = device;
  absl::StatusOr<std::unique_ptr<Session>> session =
      model.ok() ? Session::create(**model, options) : model.status();
  EXPECT_TRUE(session.ok()) << session.status().message();
  if (!session.ok())
    return {};
  Session &s = **session;
  std::vector<std::vector<int32_t>> prompts;
  for (int32_t i = 0; i < sequences; ++i)
    prompts.push_back({5 + i, 17, 3 + 2 * i});
  absl::StatusOr<std::vector<int>> ids = s.prefill(prompts);
  EXPECT_TRUE(ids.ok()) << ids.status().message();
  if (!ids.ok())
    return {};
  std::vector<int64_t> launches;
  for (int32_t token : {4, 8, 15}) {
    int64_t before = s.kernelLaunches();
    EXPECT_TRUE(s.decode(*ids, std::vector<int32_t>(ids->size(), token)).ok());
    launches.push_back(s.kernelLaunches() - before);
  }
  return launches;
}

} // namespace kiln::testing

#endif // KILN_TESTS_E2E_EMULATEDGPUUTIL_H
