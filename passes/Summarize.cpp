//===- Summarize.cpp - record model size and structure --------------------===//
#include "ir/KilnOps.h"
#include "passes/Passes.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringMap.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_KILNSUMMARIZE
#include "passes/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

int64_t elementBits(Type type) { return type.getIntOrFloatBitWidth(); }

int64_t tensorBytes(RankedTensorType type) {
  return type.getNumElements() * elementBits(type.getElementType()) / 8;
}

std::string typeName(Type type) {
  std::string name;
  llvm::raw_string_ostream os(name);
  os << type;
  return name;
}

/// Whether `op` is a group (`kiln.fused`, `kiln.linear_group`): its body's
/// arguments stand for its operands and it yields its results.
bool isGroup(Operation *op) { return isa<FusedOp, LinearGroupOp>(op); }

/// The value `v` stands for: a group's body argument is the group's
/// operand.
Value outside(Value v) {
  auto arg = dyn_cast<BlockArgument>(v);
  if (!arg)
    return v;
  Operation *parent = arg.getOwner()->getParentOp();
  return isGroup(parent) ? parent->getOperand(arg.getArgNumber()) : v;
}

/// The ops that read `v`, seen through group boundaries (into the groups
/// that take it, and out of the group that yields it) and through FP8
/// activation quantization (the GEMM reads the codes).
SmallVector<Operation *> readers(Value v) {
  SmallVector<Operation *> ops;
  for (OpOperand &use : v.getUses()) {
    Operation *owner = use.getOwner();
    if (isGroup(owner))
      llvm::append_range(ops, readers(owner->getRegion(0).getArgument(
                                  use.getOperandNumber())));
    else if (isa<YieldOp>(owner))
      llvm::append_range(ops, readers(owner->getParentOp()->getResult(
                                  use.getOperandNumber())));
    else if (auto quantize = dyn_cast<QuantizeFp8Op>(owner))
      llvm::append_range(ops, readers(quantize.getCodes()));
    else
      ops.push_back(owner);
  }
  return ops;
}

/// A token-level SwiGLU activation (`[batch, seq, inter]`, so not a routed
/// expert's; a kiln.swiglu or a kiln.gated_linear) whose down projection is
/// not added to a MoE layer's combined output (so not a shared expert) is
/// a dense FFN layer.
bool isDenseFfn(TypedValue<RankedTensorType> act) {
  if (act.getType().getRank() != 3)
    return false;
  for (Operation *down : readers(act))
    for (Value result : down->getResults())
      for (Operation *user : readers(result))
        if (isa<AddOp>(user) && llvm::any_of(user->getOperands(), [](Value v) {
              return outside(v).getDefiningOp<MoECombineOp>() != nullptr;
            }))
          return false;
  return true;
}

struct SummarizePass
    : public mlir::kiln::impl::KilnSummarizeBase<SummarizePass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    Builder b(module.getContext());

    int64_t elements = 0, bytes = 0, cacheBytesPerToken = 0, experts = 0;
    llvm::StringMap<int64_t> bytesByType;
    module.walk([&](ParameterOp param) {
      RankedTensorType type = param.getTensorType();
      elements += type.getNumElements();
      bytes += tensorBytes(type);
      bytesByType[typeName(type.getElementType())] += tensorBytes(type);
    });
    module.walk([&](KVCacheOp slot) {
      cacheBytesPerToken += slot.getStoredBytesPerToken();
    });
    module.walk([&](MoEDispatchOp dispatch) {
      experts = std::max<int64_t>(experts, dispatch.getNumExperts());
    });

    SmallVector<NamedAttribute> byType;
    for (const auto &entry : bytesByType)
      byType.push_back(b.getNamedAttr(entry.getKey(),
                                      b.getI64IntegerAttr(entry.getValue())));
    SmallVector<NamedAttribute> summary{
        b.getNamedAttr("parameters", b.getI64IntegerAttr(elements)),
        b.getNamedAttr("parameter_bytes", b.getI64IntegerAttr(bytes)),
        b.getNamedAttr("bytes", b.getDictionaryAttr(byType)),
        b.getNamedAttr("kv_cache_bytes_per_token",
                       b.getI64IntegerAttr(cacheBytesPerToken)),
        b.getNamedAttr("routed_experts", b.getI64IntegerAttr(experts)),
    };
    module->setAttr("kiln.summary", b.getDictionaryAttr(summary));

    module.walk([&](func::FuncOp func) {
      int64_t attention = 0, moe = 0, dense = 0;
      func.walk([&](Operation *op) {
        attention += isa<AttentionOp>(op);
        moe += isa<MoEGateOp>(op);
        if (auto act = dyn_cast<SwiGLUOp>(op))
          dense += isDenseFfn(act.getResult());
        else if (auto gated = dyn_cast<GatedLinearOp>(op))
          dense += isDenseFfn(gated.getResult());
      });
      func->setAttr(
          "kiln.layers",
          b.getDictionaryAttr({
              b.getNamedAttr("attention", b.getI64IntegerAttr(attention)),
              b.getNamedAttr("moe", b.getI64IntegerAttr(moe)),
              b.getNamedAttr("dense_ffn", b.getI64IntegerAttr(dense)),
          }));
    });
  }
};

} // namespace
