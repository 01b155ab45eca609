//===- Import.h - Hugging Face checkpoint -> kiln IR ------------*- C++ -*-===//
//
// The front half of `kiln compile-model`: read config.json, open the
// safetensors (when there are any), build the graph with the checkpoint's
// dtypes, verify it, and check every checkpoint tensor against the
// parameters the graph declares.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_MODELS_IMPORT_H
#define KILN_MODELS_IMPORT_H

#include "frontend/Checkpoint.h"
#include "models/ModelBuilder.h"

#include "absl/status/statusor.h"

#include <filesystem>
#include <memory>
#include <vector>

namespace kiln::models {

struct ImportedModel {
  frontend::ModelConfig config;
  /// Null for a shape-only import (a config without weights).
  std::unique_ptr<frontend::Checkpoint> checkpoint;
  mlir::OwningOpRef<mlir::ModuleOp> module;
};

/// Imports `path`: a model directory, or a config.json (shape-only).
/// `options.checkpointDtype` is set by the import itself.
absl::StatusOr<ImportedModel> importModel(mlir::MLIRContext &context,
                                          const std::filesystem::path &path,
                                          BuildOptions options = {});

/// The checkpoint tensors the module's `kiln.parameter`s stand for, with
/// stacked parameters expanded to one tensor per expert.
std::vector<frontend::ExpectedTensor> expectedTensors(mlir::ModuleOp module);

} // namespace kiln::models

#endif // KILN_MODELS_IMPORT_H
