// Shared by the e2e tests: the golden models, greedy picks, and compiling a
// model directory to an artifact in-process as `kiln compile-model` does
// (import, optimize, plan, write).
#ifndef KILN_TESTS_E2E_E2EUTIL_H
#define KILN_TESTS_E2E_E2EUTIL_H

#include "codegen/ArtifactWriter.h"
#include "codegen/HostModule.h"
#include "codegen/PlanBuilder.h"
#include "models/Import.h"
#include "passes/Pipeline.h"
#include "tests/frontend/TestUtil.h"

#include "kiln/Runtime.h"

#include "mlir/IR/MLIRContext.h"
#include "gtest/gtest.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <span>

namespace kiln::testing {

/// tests/golden: the HF checkpoints and logits make_goldens.py wrote.
inline const std::filesystem::path kGolden =
    std::filesystem::path(KILN_PROJECT_SOURCE_DIR) / "tests" / "golden";

inline int32_t argmax(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

struct CompileSettings {
  CompileSettings() { optimize.prefillTokens = 0; }
  /// prefillTokens 0: the plan's maxPrefill.
  mlir::kiln::OptimizeOptions optimize;
  codegen::PlanOptions plan{.maxBatch = 4, .maxPrefill = 16, .maxContext = 64};
  codegen::WeightsMode weights = codegen::WeightsMode::Embed;
  /// `--target=cpu`: the fused groups' CPU kernels (HostModule).
  bool hostKernels = true;
  codegen::HostModuleOptions host;
  /// Called on the plan before it is written (tests of malformed plans).
  std::function<void(artifact::ModelT &)> editPlan;
};

/// Compiles `modelDir` to `out`; the optimize options' cost-model bounds
/// come from the plan's. Returns `out`, or an empty path after reporting
/// a test failure.
inline std::filesystem::path
compileArtifact(const std::filesystem::path &modelDir,
                const std::filesystem::path &out, CompileSettings settings) {
  using frontend::testing::errorOf;
  mlir::MLIRContext context;
  absl::StatusOr<models::ImportedModel> model =
      models::importModel(context, modelDir);
  EXPECT_TRUE(model.ok()) << errorOf(model);
  if (!model.ok())
    return {};
  mlir::PassManager pm(&context);
  settings.optimize.batch = settings.plan.maxBatch;
  if (!settings.optimize.prefillTokens)
    settings.optimize.prefillTokens = settings.plan.maxPrefill;
  settings.optimize.context = settings.plan.maxContext;
  mlir::kiln::buildOptimizePipeline(pm, settings.optimize);
  if (mlir::failed(pm.run(*model->module))) {
    ADD_FAILURE() << "the optimize phase failed on " << modelDir;
    return {};
  }
  auto plan = codegen::buildPlan(*model->module, settings.plan);
  if (mlir::failed(plan)) {
    ADD_FAILURE() << "cannot plan " << modelDir;
    return {};
  }
  if (settings.hostKernels) {
    absl::StatusOr<codegen::HostModuleReport> host =
        codegen::addHostModule(*model->module, **plan, settings.host);
    if (!host.ok()) {
      ADD_FAILURE() << "CPU kernels of " << modelDir << ": " << errorOf(host);
      return {};
    }
  }
  if (settings.editPlan)
    settings.editPlan(**plan);
  absl::Status written = codegen::writeArtifact(
      out, **plan, *model->module, *model->checkpoint, settings.weights);
  EXPECT_TRUE(written.ok()) << errorOf(written);
  return written.ok() ? out : std::filesystem::path();
}

/// `modelDir` compiled with `settings` to `out` and opened; null, with a
/// test failure recorded, where either fails.
inline std::unique_ptr<Model>
compileAndOpen(const std::filesystem::path &modelDir,
               const std::filesystem::path &out,
               const CompileSettings &settings) {
  std::filesystem::path artifact = compileArtifact(modelDir, out, settings);
  if (artifact.empty())
    return nullptr;
  absl::StatusOr<std::unique_ptr<Model>> model = Model::open(artifact);
  EXPECT_TRUE(model.ok()) << model.status().message();
  return model.ok() ? *std::move(model) : nullptr;
}

} // namespace kiln::testing

#endif // KILN_TESTS_E2E_E2EUTIL_H
