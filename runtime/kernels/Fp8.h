// FP8 e4m3fn conversions for the library kernels, bit-exact with
// kiln/Float.h (and so with CUDA's __nv_fp8_e4m3): the host build of a
// kernel quantizes exactly as the CPU kernels and the GPU do.
#ifndef KILN_KERNELS_FP8_H
#define KILN_KERNELS_FP8_H

#include "FusedPrelude.h"

namespace kiln {

KILN_FN uint32_t bitsFromFloat(float value) {
#if defined(__CUDACC__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  __builtin_memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

/// e4m3fn code -> fp32, as kiln::e4m3ToFloat (kiln/Float.h).
KILN_FN float decodeE4m3(unsigned char code) {
  uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  uint32_t magnitude = code & 0x7fu;
  if (magnitude == 0x7fu)
    return floatFromBits(sign | 0x7fc00000u);
  float value = floatFromBits(magnitude << 20) * 0x1p120f;
  return floatFromBits(bitsFromFloat(value) | sign);
}

/// fp32 -> e4m3fn, saturating, as kiln::floatToE4m3.
KILN_FN unsigned char encodeE4m3(float value) {
  uint32_t bits = bitsFromFloat(value);
  uint32_t sign = (bits >> 24) & 0x80u;
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u)
    return 0x7f;
  if (magnitude > 0x43e80000u)
    return static_cast<unsigned char>(sign | 0x7eu);
  if (magnitude >= 0x3c800000u) {
    uint32_t rounded = magnitude + 0x7ffffu + ((magnitude >> 20) & 1u);
    return static_cast<unsigned char>(sign | ((rounded >> 20) - (120u << 3)));
  }
  float scaled = floatFromBits(magnitude) * 512.0f;
  float shifted = scaled + 0x1p23f;
  uint32_t steps = static_cast<uint32_t>(shifted - 0x1p23f);
  return static_cast<unsigned char>(sign | steps);
}

/// fp32 -> bf16 bits, round to nearest even, as kiln::floatToBf16.
KILN_FN uint16_t encodeBf16(float value) {
  uint32_t bits = bitsFromFloat(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

} // namespace kiln

#endif // KILN_KERNELS_FP8_H
