//===- Pipeline.cpp - the optimize phase ----------------------------------===//
#include "passes/Pipeline.h"

#include "passes/Passes.h"

namespace mlir::kiln {

void buildOptimizePipeline(PassManager &pm, const OptimizeOptions &options) {
  // Quantize first: absorbing MLA then slices FP8 kv_b_proj with its scales.
  if (options.quantizeFp8) {
    KilnQuantizeFP8Options quantize;
    quantize.ue8m0 = options.ue8m0;
    quantize.block = options.fp8Block;
    quantize.checkpointOnly = options.checkpointOnly;
    quantize.keepOps = options.keepOps;
    quantize.keep = options.keepPatterns;
    pm.addPass(createKilnQuantizeFP8(quantize));
  }
  KilnAbsorbLatentKVOptions absorb;
  absorb.mode = options.mla;
  absorb.batch = options.batch;
  absorb.prefillTokens = options.prefillTokens;
  absorb.context = options.context;
  absorb.latentCacheDtype = options.latentCacheDtype;
  pm.addPass(createKilnAbsorbLatentKV(absorb));
  // After absorption, which writes the sliced head GEMMs.
  if (options.foldHeadSlices)
    pm.addPass(createKilnFoldHeadSlices());
  // After quantization, whose FP8 projections it merges as they are; before
  // kiln-fuse, which would take the SwiGLU into a row kernel.
  if (options.fuseGatedLinear)
    pm.addPass(createKilnFuseGatedLinear());
  // After absorption and quantization, which rewrite ops it would group.
  if (options.fuse) {
    KilnFuseOptions fuse;
    fuse.horizontal = options.fuseHorizontal;
    fuse.cacheEpilogue = options.fuseKvAppend;
    pm.addPass(createKilnFuse(fuse));
  }
  // After kiln-fuse, so that FP8 siblings read the codes its epilogues
  // write.
  if (options.groupLinears)
    pm.addPass(createKilnGroupLinears());
  pm.addPass(createKilnSummarize());
}

} // namespace mlir::kiln
