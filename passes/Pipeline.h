//===- Pipeline.h - the optimize phase --------------------------*- C++ -*-===//
#ifndef KILN_PASSES_PIPELINE_H
#define KILN_PASSES_PIPELINE_H

#include "mlir/Pass/PassManager.h"

#include <string>

namespace mlir::kiln {

struct OptimizeOptions {
  /// MLA form: auto, naive or absorbed (see kiln-absorb-latent-kv).
  std::string mla = "auto";
  /// The plan's bounds, for cost models.
  int64_t batch = 8;
  int64_t prefillTokens = 512;
  int64_t context = 4096;
};

/// Adds the optimize phase of `kiln compile-model` to `pm`.
void buildOptimizePipeline(PassManager &pm, const OptimizeOptions &options);

} // namespace mlir::kiln

#endif // KILN_PASSES_PIPELINE_H
