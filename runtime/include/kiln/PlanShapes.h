// Sizes of plan tensors, shared by the compiler (buffer planning), the plan
// verifier and the executor, so that all three size a TensorRef the same way.
#ifndef KILN_RUNTIME_PLANSHAPES_H
#define KILN_RUNTIME_PLANSHAPES_H

#include "runtime/schema/kiln_generated.h"

#include <cstdint>

namespace kiln::artifact {

inline uint64_t elementBytes(ElementType type) {
  switch (type) {
  case ElementType::BF16:
  case ElementType::F16:
    return 2;
  case ElementType::F8E4M3:
    return 1;
  default:
    return 4;
  }
}

/// Values of the dimension symbols: an entry point's bounds when planning
/// and verifying, or one step's sizes when executing.
struct SymbolSizes {
  uint64_t batch = 0, seq = 0, kvLen = 0, routedRows = 0;

  uint64_t of(const Dim &dim) const {
    switch (dim.symbol()) {
    case DimSymbol::Batch:
      return batch;
    case DimSymbol::Seq:
      return seq;
    case DimSymbol::KvLen:
      return kvLen;
    case DimSymbol::RoutedRows:
      return routedRows;
    case DimSymbol::Static:
      break;
    }
    return static_cast<uint64_t>(dim.size());
  }
};

} // namespace kiln::artifact

#endif // KILN_RUNTIME_PLANSHAPES_H
