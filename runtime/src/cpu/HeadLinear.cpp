// Per-head projections: each head's rows are gathered into a contiguous
// block so that the tuned `linear` kernel does the work.
#include "runtime/src/cpu/Kernels.h"

#include <algorithm>

namespace kiln::cpu {

void headLinear(const float *x, int64_t rows, int64_t heads, int64_t in,
                Weight w, int64_t out, float *y, float *scratch,
                Fp8Activations act, int64_t xOffset, int64_t xWidth) {
  float *xh = scratch, *yh = scratch + rows * in;
  int64_t width = xWidth > 0 ? xWidth : in;
  size_t matrixBytes = static_cast<size_t>(out * in) * elementSize(w.type);
  // FP8 scales of one head's matrix (none for other types).
  int64_t matrixScales = w.type == ElementType::F8E4M3
                             ? (out + w.blockRows - 1) / w.blockRows *
                                   ((in + w.blockCols - 1) / w.blockCols)
                             : 0;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(x + (r * heads + h) * width + xOffset, in, xh + r * in);
    Weight wh = w;
    wh.data = static_cast<const std::byte *>(w.data) + h * matrixBytes;
    if (w.scale)
      wh.scale = w.scale + h * matrixScales;
    // Each head's rows are quantized on their own, as the rows * heads rows
    // of `in` they are; the scratch is reused.
    linear(xh, rows, in, wh, out, Weight{}, yh, act);
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(yh + r * out, out, y + (r * heads + h) * out);
  }
}

int64_t headLinearScratch(int64_t rows, int64_t in, int64_t out) {
  return rows * (in + out);
}

} // namespace kiln::cpu
