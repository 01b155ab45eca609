//===- FuseGatedLinear.cpp - gate and up projections into one GEMM --------===//
//
// Rewrites a SwiGLU of two projections of one input into kiln.gated_linear
// (the rules are in the pass description, Passes.td).
//
//===----------------------------------------------------------------------===//
#include "ir/KilnOps.h"
#include "passes/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_KILNFUSEGATEDLINEAR
#include "passes/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// What a gated GEMM takes from one of its two projections.
struct Projection {
  Value input, weight, scale, inputScale, expertOffsets;
  std::optional<ArrayRef<int64_t>> blockSize;
  bool actUe8m0 = false;
};

/// The projection `value` is, if a linear without bias or a grouped linear
/// computes it for no other user.
std::optional<Projection> projectionOf(Value value) {
  if (!value.hasOneUse())
    return std::nullopt;
  if (auto linear = value.getDefiningOp<LinearOp>()) {
    if (linear.getBias())
      return std::nullopt;
    return Projection{linear.getInput(),
                      linear.getWeight(),
                      linear.getWeightScale(),
                      linear.getInputScale(),
                      nullptr,
                      linear.getBlockSize(),
                      linear.getActUe8m0()};
  }
  if (auto grouped = value.getDefiningOp<GroupedLinearOp>())
    return Projection{grouped.getInput(),         grouped.getWeight(),
                      grouped.getWeightScale(),   nullptr,
                      grouped.getExpertOffsets(), grouped.getBlockSize(),
                      grouped.getActUe8m0()};
  return std::nullopt;
}

/// The gated GEMM `act` is, or null: the SwiGLU of two projections that
/// read one input the same way and feed nothing else.
GatedLinearOp gatedLinearFor(SwiGLUOp act, OpBuilder &builder) {
  std::optional<Projection> gate = projectionOf(act.getGate());
  std::optional<Projection> up = projectionOf(act.getUp());
  if (!gate || !up ||
      act.getGate().getDefiningOp()->getName() !=
          act.getUp().getDefiningOp()->getName() ||
      gate->input != up->input || gate->inputScale != up->inputScale ||
      gate->expertOffsets != up->expertOffsets ||
      gate->weight.getType() != up->weight.getType() ||
      static_cast<bool>(gate->scale) != static_cast<bool>(up->scale) ||
      gate->blockSize != up->blockSize || gate->actUe8m0 != up->actUe8m0)
    return nullptr;
  builder.setInsertionPoint(act);
  return builder.create<GatedLinearOp>(
      act.getLoc(), act.getType(), gate->input, gate->weight, up->weight,
      gate->expertOffsets, gate->scale, up->scale, gate->inputScale,
      gate->blockSize ? builder.getDenseI64ArrayAttr(*gate->blockSize)
                      : DenseI64ArrayAttr(),
      gate->actUe8m0);
}

struct FuseGatedLinearPass
    : public mlir::kiln::impl::KilnFuseGatedLinearBase<FuseGatedLinearPass> {
  void runOnOperation() override {
    SmallVector<SwiGLUOp> acts;
    getOperation().walk([&](SwiGLUOp act) { acts.push_back(act); });
    OpBuilder builder(&getContext());
    for (SwiGLUOp act : acts) {
      GatedLinearOp gated = gatedLinearFor(act, builder);
      if (!gated)
        continue;
      Operation *gate = act.getGate().getDefiningOp();
      Operation *up = act.getUp().getDefiningOp();
      act.replaceAllUsesWith(gated.getResult());
      act.erase();
      gate->erase();
      up->erase();
    }
  }
};

} // namespace
