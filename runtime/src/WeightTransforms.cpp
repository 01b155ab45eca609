#include "kiln/WeightTransforms.h"

#include "kiln/Float.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace kiln {

void applyHeadSlice(const HeadSlice &s, const std::byte *source, int64_t in,
                    size_t elementBytes, std::byte *out) {
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t r = 0; r < s.size; ++r) {
      const std::byte *row =
          source + ((h * s.rows + s.offset + r) * in) * elementBytes;
      if (!s.transpose) {
        std::memcpy(out + ((h * s.size + r) * in) * elementBytes, row,
                    static_cast<size_t>(in) * elementBytes);
        continue;
      }
      for (int64_t c = 0; c < in; ++c)
        std::memcpy(out + ((h * in + c) * s.size + r) * elementBytes,
                    row + c * elementBytes, elementBytes);
    }
}

namespace {

/// Element `i` of the source as fp32 (exact). The f16 conversion is local
/// because this file is also built into the compiler, without the runtime's
/// Float.cpp.
float sourceElement(const std::byte *source, FloatFormat format, int64_t i) {
  switch (format) {
  case FloatFormat::F32: {
    float v;
    std::memcpy(&v, source + i * 4, 4);
    return v;
  }
  case FloatFormat::BF16: {
    uint16_t h;
    std::memcpy(&h, source + i * 2, 2);
    return bf16ToFloat(h);
  }
  case FloatFormat::F16: {
    uint16_t h;
    std::memcpy(&h, source + i * 2, 2);
    // The exponent and mantissa land in an fp32 whose exponent is 112 too
    // small, normals and subnormals alike; infinities and NaNs keep theirs.
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t magnitude = static_cast<uint32_t>(h & 0x7fffu) << 13;
    uint32_t bits = magnitude >= (0x7c00u << 13)
                        ? (magnitude | 0x7f800000u)
                        : std::bit_cast<uint32_t>(
                              std::bit_cast<float>(magnitude) * 0x1p112f);
    return std::bit_cast<float>(bits | sign);
  }
  }
  return 0.0f;
}

float blockScale(float amax, bool pow2) {
  if (amax == 0.0f)
    return 1.0f;
  // amax / 448 underflows to 0 only for amax below 448 denormal steps; the
  // smallest denormal keeps x / s finite (and within 448) there.
  float s = std::max(amax / 448.0f, std::numeric_limits<float>::denorm_min());
  if (!pow2 || !std::isfinite(s))
    return s;
  int exponent;
  float mantissa = std::frexp(s, &exponent); // s = mantissa * 2^exponent
  return std::ldexp(1.0f, mantissa == 0.5f ? exponent - 1 : exponent);
}

} // namespace

void quantizeFp8Blocks(const Fp8BlockQuant &q, const std::byte *source,
                       FloatFormat format, int64_t matrices, int64_t rows,
                       int64_t cols, uint8_t *codes, float *scales) {
  int64_t blockRows = (rows + q.blockRows - 1) / q.blockRows;
  int64_t blockCols = (cols + q.blockCols - 1) / q.blockCols;
  int64_t blocks = matrices * blockRows * blockCols;
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t m = b / (blockRows * blockCols);
    int64_t r0 = b / blockCols % blockRows * q.blockRows;
    int64_t c0 = b % blockCols * q.blockCols;
    int64_t r1 = std::min(rows, r0 + q.blockRows);
    int64_t c1 = std::min(cols, c0 + q.blockCols);
    float amax = 0.0f;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c)
        amax = std::max(amax, std::fabs(sourceElement(
                                  source, format, (m * rows + r) * cols + c)));
    float s = blockScale(amax, q.pow2Scale);
    if (scales)
      scales[b] = s;
    if (!codes)
      continue;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) {
        int64_t i = (m * rows + r) * cols + c;
        codes[i] = floatToE4m3(sourceElement(source, format, i) / s);
      }
  }
}

} // namespace kiln
