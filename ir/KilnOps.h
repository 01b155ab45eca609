//===- KilnOps.h - kiln operations ------------------------------*- C++ -*-===//
#ifndef KILN_IR_KILNOPS_H
#define KILN_IR_KILNOPS_H

#include "ir/KilnDialect.h"

#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

namespace mlir::kiln {
/// The side-effect resource of the KV cache: orders `kv_append` before the
/// `kv_read`s that follow it.
struct KVCacheResource : public SideEffects::Resource::Base<KVCacheResource> {
  StringRef getName() final { return "KVCache"; }
};

/// How many leading dimensions of `type` are dynamic: the per-step ones
/// ([batch, seq], [batch, kv_len] or routed rows) ahead of a value's static
/// per-token shape.
inline size_t leadingDynamicDims(RankedTensorType type) {
  size_t n = 0;
  while (n < static_cast<size_t>(type.getRank()) &&
         ShapedType::isDynamic(type.getDimSize(n)))
    ++n;
  return n;
}
} // namespace mlir::kiln

#define GET_OP_CLASSES
#include "ir/KilnOps.h.inc"

#endif // KILN_IR_KILNOPS_H
