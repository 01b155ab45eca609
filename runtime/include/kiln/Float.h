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

/// FP8 e4m3fn, CUDA's `__nv_fp8_e4m3`: 1 sign, 4 exponent (bias 7) and 3
/// mantissa bits, no infinities, NaN = S.1111.111, largest finite 448.
inline float e4m3ToFloat(uint8_t code) {
  uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  uint32_t magnitude = code & 0x7fu;
  if (magnitude == 0x7fu)
    return std::bit_cast<float>(sign | 0x7fc00000u);
  // The fields land in an fp32 whose exponent is 120 too small (normals and
  // subnormals alike); the multiply is exact.
  float value = std::bit_cast<float>(magnitude << 20) * 0x1p120f;
  return std::bit_cast<float>(std::bit_cast<uint32_t>(value) | sign);
}

/// fp32 -> e4m3fn as `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)`:
/// round to nearest even, magnitudes beyond 448 (infinities included)
/// saturate to +-448, NaN becomes 0x7f.
inline uint8_t floatToE4m3(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  uint32_t sign = (bits >> 24) & 0x80u;
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u)
    return 0x7f;
  if (magnitude > 0x43e80000u) // beyond 464 = 448 + half an ulp
    return static_cast<uint8_t>(sign | 0x7eu);
  if (magnitude >= 0x3c800000u) { // normal: >= 2^-6
    uint32_t rounded = magnitude + 0x7ffffu + ((magnitude >> 20) & 1u);
    return static_cast<uint8_t>(sign | ((rounded >> 20) - (120u << 3)));
  }
  // Subnormal multiples of 2^-9: round x * 512 to the nearest even integer
  // (8 carries into the smallest normal, as it should).
  float scaled = std::bit_cast<float>(magnitude) * 512.0f;
  float shifted = scaled + 0x1p23f;
  uint32_t steps = static_cast<uint32_t>(shifted - 0x1p23f);
  return static_cast<uint8_t>(sign | steps);
}

} // namespace kiln

#endif // KILN_RUNTIME_FLOAT_H
