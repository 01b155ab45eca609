// Transforms that derive a parameter from a checkpoint tensor, shared by the
// compiler (applied to embedded weights) and the runtime (applied at load to
// external ones), so both produce the same bytes.
#ifndef KILN_RUNTIME_WEIGHTTRANSFORMS_H
#define KILN_RUNTIME_WEIGHTTRANSFORMS_H

#include <cstddef>
#include <cstdint>

namespace kiln {

/// Rows [offset, offset + size) of every head of a [heads * rows, in]
/// matrix: [heads, size, in], or [heads, in, size] when transposed.
struct HeadSlice {
  int64_t heads = 0, rows = 0, offset = 0, size = 0;
  bool transpose = false;

  /// Elements of the source for a derived parameter with `in` columns.
  int64_t sourceElements(int64_t in) const { return heads * rows * in; }
};

/// Writes the derived [heads, size, in] (or transposed) elements of
/// `elementBytes` bytes each from `source` into `out`.
void applyHeadSlice(const HeadSlice &slice, const std::byte *source, int64_t in,
                    size_t elementBytes, std::byte *out);

/// Element formats quantizeFp8Blocks reads.
enum class FloatFormat : uint8_t { F32, BF16, F16 };

/// DeepSeek-V3's FP8 weight blocks.
struct Fp8BlockQuant {
  int64_t blockRows = 128, blockCols = 128;
  bool pow2Scale = false;
};

/// Quantizes `matrices` contiguous [rows, cols] matrices of `format` elements
/// to e4m3 codes [matrices, rows, cols] and fp32 dequantization scales
/// [matrices, ceil(rows / blockRows), ceil(cols / blockCols)]: per block s =
/// amax / 448 (1 for an all-zero block; 2^ceil(log2(amax / 448)) when
/// pow2Scale), code = floatToE4m3(x / s). Either output may be null (only
/// that part is written). NaNs do not count towards amax and become NaN
/// codes.
void quantizeFp8Blocks(const Fp8BlockQuant &q, const std::byte *source,
                       FloatFormat format, int64_t matrices, int64_t rows,
                       int64_t cols, uint8_t *codes, float *scales);

} // namespace kiln

#endif // KILN_RUNTIME_WEIGHTTRANSFORMS_H
