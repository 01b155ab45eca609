// Pieces shared by the f32 and the FP8 paged attention kernels.
#ifndef KILN_RUNTIME_CPU_PAGEDATTENTION_H
#define KILN_RUNTIME_CPU_PAGEDATTENTION_H

#include "runtime/src/cpu/Kernels.h"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace kiln::cpu {

/// Dot product with 32 independent partial sums (four vector accumulators
/// once vectorized), so that it is not bound by the add latency.
[[gnu::always_inline]] inline float dot(const float *a, const float *b,
                                        int64_t n) {
  constexpr int L = 32;
  float acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l)
      acc[l] += a[i + l] * b[i + l];
  float sum = 0;
  for (int l = 0; l < L; ++l)
    sum += acc[l];
  for (; i < n; ++i)
    sum += a[i] * b[i];
  return sum;
}

/// Merges the context splits of paged decode attention (a query's keys
/// spread over several threads): writes query row `row`, head `h` of the output to `o` (dv floats) from
/// `splits` partials: (max, sum) pairs in `stats` and unnormalized outputs
/// in `scratch`, both indexed by (row * splits + s) * heads + h. A row
/// with no keys in any split gets zeros.
inline void mergeSplits(const float *stats, const float *scratch, int64_t row,
                        int64_t h, int64_t splits, int64_t heads, int64_t dv,
                        float *o) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t s = 0; s < splits; ++s)
    m = std::max(m, stats[2 * ((row * splits + s) * heads + h)]);
  for (int64_t i = 0; i < dv; ++i)
    o[i] = 0.0f;
  if (m == -std::numeric_limits<float>::infinity())
    return;
  float l = 0.0f;
  for (int64_t s = 0; s < splits; ++s) {
    int64_t at = (row * splits + s) * heads + h;
    if (stats[2 * at + 1] == 0.0f)
      continue; // an empty range
    float w = softmaxExp(stats[2 * at] - m);
    l += w * stats[2 * at + 1];
    const float *po = scratch + at * dv;
#pragma omp simd
    for (int64_t i = 0; i < dv; ++i)
      o[i] += w * po[i];
  }
  float inv = 1.0f / l;
#pragma omp simd
  for (int64_t i = 0; i < dv; ++i)
    o[i] *= inv;
}

} // namespace kiln::cpu

#endif // KILN_RUNTIME_CPU_PAGEDATTENTION_H
