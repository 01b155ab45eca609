// Causal attention over cached keys/values with an online (blockwise)
// softmax in fp32. Work items are (batch, query, kv head, chunk of the
// query heads sharing that kv head): each key/value row is loaded once per
// chunk and reused by all its heads (GQA/MQA), and the output rows double as
// the accumulators, so the kernel needs no scratch memory.
#include "runtime/src/cpu/Kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kiln::cpu {
namespace {

constexpr int64_t kHeadChunk = 16; // query heads per work item
constexpr int64_t kKeyBlock = 64;  // keys per softmax block

struct AttentionArgs {
  const float *q, *k, *v;
  const int32_t *positions, *kvLengths;
  int64_t seq, heads, kvHeads, dk, dv, kStride, vStride, kRow, vRow;
  float scale;
  float *out;
};

constexpr int64_t kAhead = 8; // rows prefetched ahead

[[gnu::always_inline]] inline void prefetchRow(const float *row, int64_t n) {
  for (int64_t i = 0; i < n; i += 16)
    __builtin_prefetch(row + i);
}

/// Dot product with 32 independent partial sums (four vector accumulators
/// once vectorized), so that it is not bound by the add latency.
[[gnu::always_inline]] inline float dot(const float *a, const float *b,
                                        int64_t n) {
  constexpr int L = 32, S = 8;
  int64_t i = 0;
  float sum = 0;
  if (n >= L) {
    float acc[L] = {};
    for (; i + L <= n; i += L)
      for (int l = 0; l < L; ++l)
        acc[l] += a[i + l] * b[i + l];
    for (int l = 0; l < L; ++l)
      sum += acc[l];
  }
  // Short head dimensions (and remainders) go 8 wide: summing 32 partial
  // sums would cost more than the dot product itself.
  float acc8[S] = {};
  for (; i + S <= n; i += S)
    for (int l = 0; l < S; ++l)
      acc8[l] += a[i + l] * b[i + l];
  for (int l = 0; l < S; ++l)
    sum += acc8[l];
  for (; i < n; ++i)
    sum += a[i] * b[i];
  return sum;
}

[[gnu::always_inline]] inline void attendImpl(const AttentionArgs &a, int64_t b,
                                              int64_t s, int64_t kvh,
                                              int64_t h0, int64_t nh) {
  int64_t row = b * a.seq + s;
  float *o = a.out + (row * a.heads + h0) * a.dv;
  const float *q = a.q + (row * a.heads + h0) * a.dk;
  for (int64_t i = 0; i < nh * a.dv; ++i)
    o[i] = 0.0f;
  int32_t pos = a.positions[row];
  int64_t n = pos < 0 ? 0 : std::min<int64_t>(pos + 1, a.kvLengths[b]);
  if (n <= 0)
    return;
  float m[kHeadChunk], l[kHeadChunk], p[kHeadChunk][kKeyBlock];
  for (int64_t h = 0; h < nh; ++h) {
    m[h] = -std::numeric_limits<float>::infinity();
    l[h] = 0.0f;
  }
  const float *kb = a.k + b * a.kStride + kvh * a.dk;
  const float *vb = a.v + b * a.vStride + kvh * a.dv;
  int64_t kRow = a.kRow, vRow = a.vRow;
  bool strided = kRow != a.dk; // contiguous rows prefetch themselves
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    int64_t nb = std::min(kKeyBlock, n - j0);
    for (int64_t j = 0; j < nb; ++j) {
      const float *kj = kb + (j0 + j) * kRow;
      // Rows of one kv head are kRow apart (a page apart for 8 x 128
      // heads): hardware prefetchers do not follow, so fetch ahead.
      if (strided && j0 + j + kAhead < n) {
        prefetchRow(kj + kAhead * kRow, a.dk);
        prefetchRow(vb + (j0 + j + kAhead) * vRow, a.dv);
      }
      for (int64_t h = 0; h < nh; ++h)
        p[h][j] = dot(q + h * a.dk, kj, a.dk) * a.scale;
    }
    for (int64_t h = 0; h < nh; ++h) {
      float blockMax = p[h][0];
      for (int64_t j = 1; j < nb; ++j)
        blockMax = std::max(blockMax, p[h][j]);
      float newMax = std::max(m[h], blockMax);
      if (newMax > m[h] && l[h] > 0.0f) {
        float alpha = softmaxExp(m[h] - newMax);
        l[h] *= alpha;
        float *oh = o + h * a.dv;
#pragma omp simd
        for (int64_t i = 0; i < a.dv; ++i)
          oh[i] *= alpha;
      }
      m[h] = newMax;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < nb; ++j) {
        p[h][j] = softmaxExp(p[h][j] - newMax);
        sum += p[h][j];
      }
      l[h] += sum;
    }
    // o[h] += sum_j p[h][j] v[j], four keys per pass over the output rows.
    int64_t j = 0;
    for (; j + 4 <= nb; j += 4) {
      const float *v0 = vb + (j0 + j) * vRow, *v1 = v0 + vRow, *v2 = v1 + vRow,
                  *v3 = v2 + vRow;
      for (int64_t h = 0; h < nh; ++h) {
        float p0 = p[h][j], p1 = p[h][j + 1], p2 = p[h][j + 2],
              p3 = p[h][j + 3];
        float *oh = o + h * a.dv;
#pragma omp simd
        for (int64_t i = 0; i < a.dv; ++i)
          oh[i] += (p0 * v0[i] + p1 * v1[i]) + (p2 * v2[i] + p3 * v3[i]);
      }
    }
    for (; j < nb; ++j) {
      const float *vj = vb + (j0 + j) * vRow;
      for (int64_t h = 0; h < nh; ++h) {
        float w = p[h][j];
        float *oh = o + h * a.dv;
#pragma omp simd
        for (int64_t i = 0; i < a.dv; ++i)
          oh[i] += w * vj[i];
      }
    }
  }
  for (int64_t h = 0; h < nh; ++h) {
    float inv = 1.0f / l[h];
    float *oh = o + h * a.dv;
#pragma omp simd
    for (int64_t i = 0; i < a.dv; ++i)
      oh[i] *= inv;
  }
}

void attendGeneric(const AttentionArgs &a, int64_t b, int64_t s, int64_t kvh,
                   int64_t h0, int64_t nh) {
  attendImpl(a, b, s, kvh, h0, nh);
}

__attribute__((target("avx2,fma"))) void attendAvx2(const AttentionArgs &a,
                                                    int64_t b, int64_t s,
                                                    int64_t kvh, int64_t h0,
                                                    int64_t nh) {
  attendImpl(a, b, s, kvh, h0, nh);
}

} // namespace

void attention(const float *q, const float *k, const float *v,
               const int32_t *positions, const int32_t *kvLengths,
               int64_t batch, int64_t seq, int64_t heads, int64_t kvHeads,
               int64_t dk, int64_t dv, int64_t kBatchStride,
               int64_t vBatchStride, float scale, float *out,
               int64_t kRowStride, int64_t vRowStride) {
  AttentionArgs args{q,
                     k,
                     v,
                     positions,
                     kvLengths,
                     seq,
                     heads,
                     kvHeads,
                     dk,
                     dv,
                     kBatchStride,
                     vBatchStride,
                     kRowStride ? kRowStride : kvHeads * dk,
                     vRowStride ? vRowStride : kvHeads * dv,
                     scale,
                     out};
  int64_t group = heads / kvHeads;
  int64_t chunks = (group + kHeadChunk - 1) / kHeadChunk;
  int64_t items = batch * seq * kvHeads * chunks;
  bool avx2 = vectorKernelsActive();
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < items; ++item) {
    int64_t c = item % chunks, rest = item / chunks;
    int64_t kvh = rest % kvHeads;
    rest /= kvHeads;
    int64_t s = rest % seq, b = rest / seq;
    int64_t h0 = kvh * group + c * kHeadChunk;
    int64_t nh = std::min(kHeadChunk, group - c * kHeadChunk);
    if (avx2)
      attendAvx2(args, b, s, kvh, h0, nh);
    else
      attendGeneric(args, b, s, kvh, h0, nh);
  }
}

} // namespace kiln::cpu
