//===- GroupLinears.cpp - independent GEMMs as one launch -----------------===//
//
// Wraps GEMMs that can share a launch in kiln.linear_group ops (the rules
// are in the pass description, Passes.td).
//
//===----------------------------------------------------------------------===//
#include "ir/KilnOps.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
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

/// A kiln.linear, kiln.grouped_linear or kiln.gated_linear: input first,
/// one result.
bool isGemm(Operation *op) { return LinearGroupOp::canGroup(op, op); }

/// The ops defining `gemm`'s operands after `first` in its block, if all
/// of them can move up to `first` (operand-free and side-effect-free, as
/// kiln.get_parameter); nullopt if one cannot, e.g. `first` itself or
/// anything computed from it.
std::optional<SmallVector<Operation *>> lateDefinitions(Operation *gemm,
                                                        Operation *first) {
  SmallVector<Operation *> late;
  for (Value operand : gemm->getOperands()) {
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

/// Wraps `gemms` (in block order; their operands available at the first)
/// in one kiln.linear_group at the first's place.
void group(ArrayRef<Operation *> gemms, OpBuilder &builder) {
  Operation *first = gemms.front();
  llvm::SetVector<Value> inputs;
  SmallVector<Type> resultTypes;
  for (Operation *gemm : gemms) {
    inputs.insert(gemm->operand_begin(), gemm->operand_end());
    resultTypes.push_back(gemm->getResult(0).getType());
  }
  builder.setInsertionPoint(first);
  auto grouped = builder.create<LinearGroupOp>(first->getLoc(), resultTypes,
                                               inputs.getArrayRef());
  Block *body = builder.createBlock(&grouped.getBody());
  IRMapping mapping;
  for (Value input : inputs)
    mapping.map(input, body->addArgument(input.getType(), input.getLoc()));
  SmallVector<Value> results;
  for (Operation *gemm : gemms)
    results.push_back(builder.clone(*gemm, mapping)->getResult(0));
  builder.create<YieldOp>(first->getLoc(), results);
  for (auto [gemm, result] : llvm::zip_equal(gemms, grouped.getResults())) {
    gemm->getResult(0).replaceAllUsesWith(result);
    gemm->erase();
  }
}

/// GEMMs further than this many ops after a group's first stay out of it:
/// a member's result lives from the group on.
constexpr size_t kLookahead = 32;

struct GroupLinearsPass
    : public mlir::kiln::impl::KilnGroupLinearsBase<GroupLinearsPass> {
  void runOnOperation() override {
    // In rounds: a group makes its members' results available from its
    // place on, so GEMMs that read them may group in the next round (a
    // MoE layer's down projections, after its routed and shared experts'
    // gated GEMMs).
    OpBuilder builder(&getContext());
    while (true) {
      SmallVector<SmallVector<Operation *>> groups;
      getOperation().walk([&](func::FuncOp func) {
        for (Block &block : func.getBody())
          collect(block, groups);
      });
      if (groups.empty())
        return;
      for (const SmallVector<Operation *> &g : groups)
        group(g, builder);
    }
  }

  /// Groups of `block`'s GEMMs, in program order: each ungrouped GEMM takes
  /// the next ones within kLookahead ops that can share its launch and
  /// whose operands are available where it is (moving parameter reads up).
  void collect(Block &block, SmallVector<SmallVector<Operation *>> &groups) {
    SmallVector<Operation *> gemms;
    llvm::DenseMap<Operation *, size_t> position;
    for (Operation &op : block) {
      position[&op] = position.size();
      if (isGemm(&op))
        gemms.push_back(&op);
    }
    llvm::DenseSet<Operation *> taken;
    for (size_t i = 0; i < gemms.size(); ++i) {
      Operation *first = gemms[i];
      if (taken.contains(first))
        continue;
      SmallVector<Operation *> members{first};
      for (size_t j = i + 1;
           j < gemms.size() && members.size() < LinearGroupOp::kMaxLinears;
           ++j) {
        Operation *gemm = gemms[j];
        if (position[gemm] - position[first] > kLookahead)
          break;
        if (taken.contains(gemm) || !LinearGroupOp::canGroup(first, gemm))
          continue;
        std::optional<SmallVector<Operation *>> late =
            lateDefinitions(gemm, first);
        if (!late)
          continue;
        for (Operation *def : *late)
          def->moveBefore(first);
        members.push_back(gemm);
      }
      if (members.size() < 2)
        continue;
      taken.insert(members.begin(), members.end());
      groups.push_back(std::move(members));
    }
  }
};

} // namespace
