// Per-head projections: each head's rows are gathered into a contiguous
// block so that the tuned `linear` kernel does the work.
#include "runtime/src/cpu/Kernels.h"

#include <algorithm>

namespace kiln::cpu {

void headLinear(const float *x, int64_t rows, int64_t heads, int64_t in,
                Weight w, int64_t out, float *y, float *scratch) {
  float *xh = scratch, *yh = scratch + rows * in;
  size_t matrixBytes = static_cast<size_t>(out * in) * elementSize(w.type);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(x + (r * heads + h) * in, in, xh + r * in);
    Weight wh{static_cast<const std::byte *>(w.data) + h * matrixBytes, w.type};
    linear(xh, rows, in, wh, out, Weight{}, yh);
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(yh + r * out, out, y + (r * heads + h) * out);
  }
}

int64_t headLinearScratch(int64_t rows, int64_t in, int64_t out) {
  return rows * (in + out);
}

} // namespace kiln::cpu
