//===- Pipeline.h - the optimize phase --------------------------*- C++ -*-===//
#ifndef KILN_PASSES_PIPELINE_H
#define KILN_PASSES_PIPELINE_H

#include "mlir/Pass/PassManager.h"

#include <string>
#include <vector>

namespace mlir::kiln {

struct OptimizeOptions {
  /// MLA form: auto, naive or absorbed (see kiln-absorb-latent-kv).
  std::string mla = "auto";
  /// The plan's bounds, for cost models.
  int64_t batch = 8;
  int64_t prefillTokens = 512;
  int64_t context = 4096;
  /// Run kiln-quantize-fp8 with these settings.
  bool quantizeFp8 = false;
  bool ue8m0 = false;
  /// Weight block edge (DeepSeek's 128; tests use smaller blocks to cover
  /// many blocks on tiny models).
  int64_t fp8Block = 128;
  /// Native FP8 checkpoint: keep what it stores in higher precision.
  bool checkpointOnly = false;
  std::vector<std::string> keepOps, keepPatterns;
  /// Latent KV-cache storage: "f32" or "fp8".
  std::string latentCacheDtype = "f32";
  /// Run kiln-fuse (row-local op chains into kiln.fused kernels).
  bool fuse = true;
  /// Let kiln-fuse merge independent fused kernels of the same tokens.
  bool fuseHorizontal = true;
  /// Let kiln-fuse store KV-cache rows in the kernel that computes them.
  bool fuseKvAppend = true;
  /// Run kiln-fuse-gated-linear (a SwiGLU's two projections as one GEMM).
  bool fuseGatedLinear = true;
  /// Run kiln-fold-head-slices (sliced head GEMM inputs read in place).
  bool foldHeadSlices = true;
  /// Run kiln-group-linears (independent GEMMs of one kernel as one launch).
  bool groupLinears = true;
};

/// Adds the optimize phase of `kiln compile-model` to `pm`.
void buildOptimizePipeline(PassManager &pm, const OptimizeOptions &options);

} // namespace mlir::kiln

#endif // KILN_PASSES_PIPELINE_H
