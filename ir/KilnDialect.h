//===- KilnDialect.h - The kiln dialect -------------------------*- C++ -*-===//
#ifndef KILN_IR_KILNDIALECT_H
#define KILN_IR_KILNDIALECT_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/DialectImplementation.h"
#include "mlir/IR/OpImplementation.h"

#include "ir/KilnDialect.h.inc"
#include "ir/KilnEnums.h.inc"

namespace mlir::kiln {
/// Parses a float written by `printF64` (or any MLIR float literal).
FailureOr<llvm::APFloat> parseF64(AsmParser &parser);
/// Prints the shortest decimal that reads back as `value`, always with a dot
/// or exponent so that MLIR lexes it as a float.
void printF64(AsmPrinter &printer, const llvm::APFloat &value);
/// Parses `true` or `false`.
FailureOr<bool> parseBool(AsmParser &parser);
} // namespace mlir::kiln

#define GET_ATTRDEF_CLASSES
#include "ir/KilnAttrs.h.inc"

#endif // KILN_IR_KILNDIALECT_H
