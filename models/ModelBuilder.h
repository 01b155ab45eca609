//===- ModelBuilder.h - config -> kiln IR -----------------------*- C++ -*-===//
//
// Builds the `kiln` IR of a model from a validated config: one function per
// block (MLA and GQA attention, dense MLP, MoE, decoder layer, MTP module,
// model). The result is the naive, unoptimized graph: MLA caches per-head
// K and V, weights keep their checkpoint dtypes, nothing is fused. Passes do
// the rest.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_MODELS_MODELBUILDER_H
#define KILN_MODELS_MODELBUILDER_H

#include "frontend/Config.h"
#include "frontend/DType.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

#include <functional>
#include <optional>
#include <string>

namespace kiln::models {

struct BuildOptions {
  /// Element type of activations: f32 (default) or bf16.
  bool bf16Activations = false;
  /// The dtype the checkpoint stores a tensor in, or nullopt when there is
  /// no checkpoint or no such tensor; then the config decides (torch_dtype,
  /// and FP8 for quantizable projections when the config declares it).
  std::function<std::optional<frontend::DType>(const std::string &)>
      checkpointDtype;
  /// Build the multi-token-prediction module(s) the config declares.
  bool includeMtp = true;
};

/// Builds the module. The config must have been validated by the frontend;
/// the result passes the MLIR verifier.
mlir::OwningOpRef<mlir::ModuleOp>
buildModel(mlir::MLIRContext &context, const frontend::ModelConfig &config,
           const BuildOptions &options);

} // namespace kiln::models

#endif // KILN_MODELS_MODELBUILDER_H
