// Element types of checkpoint tensors, as named by the safetensors format.
#ifndef KILN_FRONTEND_DTYPE_H
#define KILN_FRONTEND_DTYPE_H

#include <cstdint>
#include <optional>
#include <string_view>

namespace kiln::frontend {

enum class DType : uint8_t {
  F64,
  F32,
  F16,
  BF16,
  F8_E4M3,
  F8_E5M2,
  I64,
  I32,
  I16,
  I8,
  U8,
  BOOL,
};

/// The safetensors spelling ("F32", "BF16", "F8_E4M3", ...).
std::string_view dtypeName(DType dtype);

/// Parses a safetensors dtype string; nullopt for an unknown one.
std::optional<DType> parseDType(std::string_view name);

/// Bytes per element.
int64_t dtypeSize(DType dtype);

/// True for the floating-point types a weight may be stored in
/// (F32, F16, BF16, F8_E4M3).
bool isWeightFloat(DType dtype);

} // namespace kiln::frontend

#endif // KILN_FRONTEND_DTYPE_H
