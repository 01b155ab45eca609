//===- Pipeline.cpp - the optimize phase ----------------------------------===//
#include "passes/Pipeline.h"

#include "passes/Passes.h"

namespace mlir::kiln {

void buildOptimizePipeline(PassManager &pm, const OptimizeOptions &options) {
  KilnAbsorbLatentKVOptions absorb;
  absorb.mode = options.mla;
  absorb.batch = options.batch;
  absorb.prefillTokens = options.prefillTokens;
  absorb.context = options.context;
  pm.addPass(createKilnAbsorbLatentKV(absorb));
  pm.addPass(createKilnSummarize());
}

} // namespace mlir::kiln
