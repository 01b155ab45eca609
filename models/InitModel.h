//===- InitModel.h - seeded random Hugging Face checkpoints -----*- C++ -*-===//
//
// `kiln init-model`: writes a Hugging Face-style directory (config.json and
// model.safetensors) with seeded random weights for every tensor the model
// declares, so tests and demos have real files to load.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_MODELS_INITMODEL_H
#define KILN_MODELS_INITMODEL_H

#include "frontend/DType.h"

#include "absl/status/status.h"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace mlir {
class MLIRContext;
} // namespace mlir

namespace kiln::models {

struct InitModelOptions {
  /// config.json text and the name to report it by (a preset or a file).
  std::string configJson;
  std::string configName;
  uint64_t seed = 0;
  std::filesystem::path outputDir;
  /// Weight dtype (F32, BF16 or F16); defaults to the config's torch_dtype.
  std::optional<frontend::DType> dtype;
  /// Refuse to write more than this many bytes of weights.
  int64_t maxBytes = int64_t{4} << 30;
};

absl::Status initModel(mlir::MLIRContext &context,
                       const InitModelOptions &options);

} // namespace kiln::models

#endif // KILN_MODELS_INITMODEL_H
