//===- GroupLinears.cpp - linears of one input as one GEMM launch ---------===//
//
// Wraps kiln.linear ops that read one input in kiln.linear_group ops (the
// rules are in the pass description, Passes.td).
//
//===----------------------------------------------------------------------===//
#include "ir/KilnOps.h"
#include "passes/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "llvm/ADT/SetVector.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_KILNGROUPLINEARS
#include "passes/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// Whether one GEMM launch can run `a` and `b`: one input read the same
/// way, one weight element type and FP8 block shape.
bool sameGemm(LinearOp a, LinearOp b) {
  return a.getInput() == b.getInput() &&
         a.getInputScale() == b.getInputScale() &&
         getElementTypeOrSelf(a.getWeight().getType()) ==
             getElementTypeOrSelf(b.getWeight().getType()) &&
         a.getBlockSize() == b.getBlockSize() &&
         a.getActUe8m0() == b.getActUe8m0();
}

/// The ops defining `linear`'s operands after `first` in its block, if all
/// of them can move up to `first` (operand-free and side-effect-free, as
/// kiln.get_parameter); nullopt if one cannot.
std::optional<SmallVector<Operation *>> lateDefinitions(LinearOp linear,
                                                        LinearOp first) {
  SmallVector<Operation *> late;
  for (Value operand : linear->getOperands()) {
    Operation *def = operand.getDefiningOp();
    if (!def || def->getBlock() != first->getBlock() ||
        def->isBeforeInBlock(first))
      continue;
    if (def->getNumOperands() != 0 || !isMemoryEffectFree(def))
      return std::nullopt;
    late.push_back(def);
  }
  return late;
}

/// Wraps `linears` (in block order, sameGemm with the first) in one
/// kiln.linear_group at the first's place.
void group(ArrayRef<LinearOp> linears, OpBuilder &builder) {
  LinearOp first = linears.front();
  llvm::SetVector<Value> inputs;
  SmallVector<Type> resultTypes;
  for (LinearOp linear : linears) {
    inputs.insert(linear->operand_begin(), linear->operand_end());
    resultTypes.push_back(linear.getType());
  }
  builder.setInsertionPoint(first);
  auto grouped = builder.create<LinearGroupOp>(first.getLoc(), resultTypes,
                                               inputs.getArrayRef());
  Block *body = builder.createBlock(&grouped.getBody());
  IRMapping mapping;
  for (Value input : inputs)
    mapping.map(input, body->addArgument(input.getType(), input.getLoc()));
  SmallVector<Value> results;
  for (LinearOp linear : linears)
    results.push_back(builder.clone(*linear, mapping)->getResult(0));
  builder.create<YieldOp>(first.getLoc(), results);
  for (auto [linear, result] : llvm::zip_equal(linears, grouped.getResults())) {
    Operation *op = linear;
    op->getResult(0).replaceAllUsesWith(result);
    op->erase();
  }
}

struct GroupLinearsPass
    : public mlir::kiln::impl::KilnGroupLinearsBase<GroupLinearsPass> {
  void runOnOperation() override {
    // Candidate groups per block, in program order; a linear joins the
    // first open group it matches, else opens one.
    llvm::MapVector<Block *, SmallVector<SmallVector<LinearOp>>> candidates;
    getOperation().walk([&](LinearOp linear) {
      if (isa<LinearGroupOp>(linear->getParentOp()))
        return;
      auto &groups = candidates[linear->getBlock()];
      for (SmallVector<LinearOp> &g : groups)
        if (g.size() < LinearGroupOp::kMaxLinears &&
            sameGemm(g.front(), linear))
          if (auto late = lateDefinitions(linear, g.front())) {
            for (Operation *def : *late)
              def->moveBefore(g.front());
            g.push_back(linear);
            return;
          }
      groups.push_back({linear});
    });
    OpBuilder builder(&getContext());
    for (auto &[block, groups] : candidates)
      for (const SmallVector<LinearOp> &g : groups)
        if (g.size() >= 2)
          group(g, builder);
  }
};

} // namespace
