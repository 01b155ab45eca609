//===- Import.cpp - Hugging Face checkpoint -> kiln IR --------------------===//
#include "models/Import.h"

#include "ir/KilnOps.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Verifier.h"
#include "llvm/Support/raw_ostream.h"

namespace kiln::models {
namespace {

using frontend::DType;

DType dtypeOf(mlir::Type type) {
  if (type.isF32())
    return DType::F32;
  if (type.isF16())
    return DType::F16;
  if (llvm::isa<mlir::Float8E4M3FNType>(type))
    return DType::F8_E4M3;
  return DType::BF16;
}

/// HF's own classes (e.g. DeepseekV3ForCausalLM) drop the MTP layers when
/// saving, so a checkpoint only gets them when it holds their tensors.
bool checkpointHasMtp(const frontend::Checkpoint &checkpoint,
                      const frontend::ModelConfig &config) {
  return checkpoint
      .find("model.layers." + std::to_string(config.numHiddenLayers) +
            ".eh_proj.weight")
      .has_value();
}

} // namespace

std::vector<frontend::ExpectedTensor> expectedTensors(mlir::ModuleOp module) {
  std::vector<frontend::ExpectedTensor> expected;
  module.walk([&](mlir::kiln::ParameterOp param) {
    mlir::RankedTensorType type = param.getTensorType();
    std::vector<int64_t> shape(type.getShape().begin(), type.getShape().end());
    std::vector<DType> dtypes{dtypeOf(type.getElementType())};
    std::string source = param.getSourceName().str();
    if (!param.isStacked()) {
      expected.push_back({source, shape, dtypes});
      return;
    }
    size_t at = source.find("{}");
    std::vector<int64_t> perExpert(shape.begin() + 1, shape.end());
    for (int64_t e = 0; e < shape[0]; ++e)
      expected.push_back(
          {source.substr(0, at) + std::to_string(e) + source.substr(at + 2),
           perExpert, dtypes});
  });
  return expected;
}

absl::StatusOr<ImportedModel> importModel(mlir::MLIRContext &context,
                                          const std::filesystem::path &path,
                                          BuildOptions options) {
  ImportedModel model;
  absl::StatusOr<frontend::ModelConfig> config =
      frontend::loadModelConfig(path);
  if (!config.ok())
    return config.status();
  model.config = *std::move(config);

  // A directory may carry weights; a config.json alone is shape-only.
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec) &&
      frontend::Checkpoint::hasWeights(path)) {
    absl::StatusOr<std::unique_ptr<frontend::Checkpoint>> checkpoint =
        frontend::Checkpoint::open(path);
    if (!checkpoint.ok())
      return checkpoint.status();
    model.checkpoint = *std::move(checkpoint);
    const frontend::Checkpoint *ckpt = model.checkpoint.get();
    options.checkpointDtype =
        [ckpt](const std::string &name) -> std::optional<DType> {
      if (std::optional<frontend::CheckpointTensor> t = ckpt->find(name))
        return t->info->dtype;
      return std::nullopt;
    };
    options.includeMtp =
        options.includeMtp && checkpointHasMtp(*ckpt, model.config);
  }

  model.module = buildModel(context, model.config, options);
  std::string diagnostics;
  {
    mlir::ScopedDiagnosticHandler handler(
        &context, [&](mlir::Diagnostic &diag) {
          llvm::raw_string_ostream os(diagnostics);
          os << diag.getLocation() << ": " << diag << "\n";
          return mlir::success();
        });
    if (mlir::failed(mlir::verify(*model.module)))
      return absl::InternalError("the model builder produced invalid IR for " +
                                 model.config.sourceName + ":\n" + diagnostics);
  }

  if (model.checkpoint) {
    std::vector<frontend::ExpectedTensor> expected =
        expectedTensors(*model.module);
    if (absl::Status status =
            frontend::checkTensors(*model.checkpoint, expected);
        !status.ok())
      return status;
  }
  return model;
}

} // namespace kiln::models
