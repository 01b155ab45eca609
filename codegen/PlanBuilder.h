//===- PlanBuilder.h - kiln IR -> execution plan ----------------*- C++ -*-===//
//
// Lowers the `@forward` function of a kiln module to the runtime's execution
// plan: for each entry point (prefill, decode) an ordered list of kernel
// launches over argument slices of one arena, with a static buffer plan from
// liveness, plus the parameter and KV-cache tables.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_CODEGEN_PLANBUILDER_H
#define KILN_CODEGEN_PLANBUILDER_H

#include "runtime/schema/kiln_generated.h"

#include "mlir/IR/BuiltinOps.h"

#include <memory>

namespace kiln::codegen {

struct PlanOptions {
  /// Sequences per decode step (and sequences a session holds).
  uint32_t maxBatch = 8;
  /// Sequences per prefill step; 0: maxBatch. Prefill activations scale
  /// with this times maxPrefill, so large decode batches want it smaller.
  uint32_t maxPrefillBatch = 0;
  /// Tokens per sequence in one prefill step.
  uint32_t maxPrefill = 512;
  /// Positions the KV cache holds per sequence.
  uint32_t maxContext = 2048;
};

/// Builds the plan, or emits a diagnostic on the offending op and fails.
/// Parameter offsets/sources are left for the artifact writer.
mlir::FailureOr<std::unique_ptr<artifact::ModelT>>
buildPlan(mlir::ModuleOp module, const PlanOptions &options);

} // namespace kiln::codegen

#endif // KILN_CODEGEN_PLANBUILDER_H
