// Conversions between fp32 and the 16-bit float formats weights are stored
// in. Round to nearest, ties to even, as PyTorch and CUDA convert; NaN stays
// NaN and overflow becomes infinity.
#ifndef KILN_RUNTIME_FLOAT_H
#define KILN_RUNTIME_FLOAT_H

#include <bit>
#include <cstdint>

namespace kiln {

inline float bf16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

inline uint16_t floatToBf16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) // NaN: keep it quiet and signed.
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float f16ToFloat(uint16_t bits);
uint16_t floatToF16(float value);

} // namespace kiln

#endif // KILN_RUNTIME_FLOAT_H
