//===- FoldHeadSlices.cpp - sliced head GEMM inputs read in place ---------===//
//
// Folds a kiln.slice feeding a kiln.head_linear into the GEMM's
// input_offset (the rules are in the pass description, Passes.td).
//
//===----------------------------------------------------------------------===//
#include "ir/KilnOps.h"
#include "passes/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_KILNFOLDHEADSLICES
#include "passes/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

struct FoldHeadSlicesPass
    : public mlir::kiln::impl::KilnFoldHeadSlicesBase<FoldHeadSlicesPass> {
  void runOnOperation() override {
    Builder builder(&getContext());
    getOperation().walk([&](HeadLinearOp gemm) {
      if (gemm.getWeightScale() || !gemm.getInput().getDefiningOp<SliceOp>())
        return;
      // Through every slice of a chain: their offsets add up.
      int64_t offset = gemm.getInputOffset().value_or(0);
      while (auto slice = gemm.getInput().getDefiningOp<SliceOp>()) {
        offset += slice.getOffset();
        gemm.getInputMutable().assign(slice.getInput());
        if (slice->use_empty())
          slice->erase();
      }
      gemm.setInputOffsetAttr(builder.getI64IntegerAttr(offset));
    });
  }
};

} // namespace
