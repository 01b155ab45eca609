// The tile kernel that prefill attention (contiguous and paged) runs: up to
// kMaxTileRows query rows that share a kv head (the heads of a GQA/MQA group
// at several positions) attend together, a block of 64 keys at a time, so
// that every key and value row is read once per tile instead of once per
// query row. Scores are computed transposed, S^T[key][row] = sum_d k[d] *
// Q^T[d][row] over Q packed as Q^T: a register tile of 4 keys x 2 vectors
// of rows loads one broadcast key element per 2 FMAs, and the online
// softmax then runs across rows in vector lanes. P.V accumulates into the
// output rows in register tiles of 4 rows x 2 vectors of columns.
//
// Two instances: AVX2 + FMA intrinsics and portable 4-wide vectors (GCC's
// vector extension, which lowers to the baseline instruction set).
#ifndef KILN_RUNTIME_CPU_ATTENTIONTILE_H
#define KILN_RUNTIME_CPU_ATTENTIONTILE_H

#include "runtime/src/cpu/Kernels.h"

#include <algorithm>
#include <cstring>
#include <immintrin.h>
#include <limits>

namespace kiln::cpu::tiled {

inline constexpr int64_t kKeyBlock = 64;    // keys per softmax block
inline constexpr int64_t kMaxTileRows = 32; // query rows per tile
// Packed Q^T floats (64 KiB of stack): head dimensions up to 512 are packed
// once per tile; wider ones are packed again per key block, a cost of
// 1 / kKeyBlock of their score FMAs.
inline constexpr int64_t kPackedFloats = kMaxTileRows * 512;

/// Query rows attending together to the keys of one kv head.
struct Tile {
  int64_t rows = 0;
  const float *q[kMaxTileRows]; // dk floats each
  float *o[kMaxTileRows];       // dv floats each
  int64_t keys[kMaxTileRows];   // row r sees keys [0, keys[r])
};

/// How a call is cut into tiles: up to kMaxTileRows query heads of one kv
/// head group at consecutive positions of a sequence, rows ordered
/// (position, head).
struct Tiling {
  int64_t seq, kvHeads, group, headsPerTile, chunks, positionsPerTile, spans,
      items;
  Tiling(int64_t batch, int64_t seq, int64_t heads, int64_t kvHeads)
      : seq(seq), kvHeads(kvHeads), group(heads / kvHeads),
        headsPerTile(std::min(group, kMaxTileRows)),
        chunks((group + headsPerTile - 1) / headsPerTile),
        positionsPerTile(kMaxTileRows / headsPerTile),
        spans((seq + positionsPerTile - 1) / positionsPerTile),
        items(batch * kvHeads * chunks * spans) {}

  struct Item {
    int64_t b, kvh, h0, nh, s0, ns;
  };
  /// Work item i; the last spans of a sequence (the most keys) come first,
  /// so that a dynamic schedule does not end on them.
  Item item(int64_t i) const {
    int64_t span = spans - 1 - i % spans, rest = i / spans;
    int64_t c = rest % chunks;
    rest /= chunks;
    int64_t kvh = rest % kvHeads, b = rest / kvHeads;
    int64_t s0 = span * positionsPerTile;
    return {b,
            kvh,
            kvh * group + c * headsPerTile,
            std::min(headsPerTile, group - c * headsPerTile),
            s0,
            std::min(positionsPerTile, seq - s0)};
  }
};

/// The tile of work item `it` for q [batch, seq, heads, dk] and out [batch,
/// seq, heads, dv], with the causal key counts of the attention kernels.
inline Tile makeTile(const Tiling::Item &it, const float *q, float *out,
                     const int32_t *positions, const int32_t *kvLengths,
                     int64_t seq, int64_t heads, int64_t dk, int64_t dv) {
  Tile t;
  t.rows = it.ns * it.nh;
  for (int64_t i = 0; i < it.ns; ++i) {
    int64_t row = it.b * seq + it.s0 + i;
    int32_t pos = positions[row];
    int64_t keys = pos < 0 ? 0 : std::min<int64_t>(pos + 1, kvLengths[it.b]);
    for (int64_t h = 0; h < it.nh; ++h) {
      int64_t at = row * heads + it.h0 + h;
      t.q[i * it.nh + h] = q + at * dk;
      t.o[i * it.nh + h] = out + at * dv;
      t.keys[i * it.nh + h] = keys;
    }
  }
  return t;
}

// Vector operations write through references: a 256-bit vector passed or
// returned by value from code compiled without AVX changes the ABI (GCC's
// -Wpsabi), although everything is inlined into the AVX2 functions.
struct VecPortable {
  using T = float __attribute__((vector_size(16)));
  static constexpr int64_t kLanes = 4;
  static void load(T &v, const float *p) { std::memcpy(&v, p, sizeof(v)); }
  static void store(float *p, const T &v) { std::memcpy(p, &v, sizeof(v)); }
  static void broadcast(T &v, float x) { v = T{x, x, x, x}; }
  static void fma(T &acc, const T &a, const T &b) { acc += a * b; }
};

#define KILN_TILE_AVX2 __attribute__((target("avx2,fma")))
struct VecAvx2 {
  using T = __m256;
  static constexpr int64_t kLanes = 8;
  KILN_TILE_AVX2 static void load(T &v, const float *p) {
    v = _mm256_loadu_ps(p);
  }
  KILN_TILE_AVX2 static void store(float *p, const T &v) {
    _mm256_storeu_ps(p, v);
  }
  KILN_TILE_AVX2 static void broadcast(T &v, float x) { v = _mm256_set1_ps(x); }
  KILN_TILE_AVX2 static void fma(T &acc, const T &a, const T &b) {
    acc = _mm256_fmadd_ps(a, b, acc);
  }
};
#undef KILN_TILE_AVX2

/// x = softmaxExp(x) on every lane, in GCC's generic vector operations
/// (which the AVX2 instance compiles to AVX2 instructions). In place for the
/// reason the vector operations above are.
template <class T> [[gnu::always_inline]] inline void expInPlace(T &x) {
  using I = decltype(T{} < T{});
  T high = T{} + 88.7f, low = T{} - 87.3f;
  T c = x > high ? high : x;
  T f = c * 1.44269504088896341f + 0.5f;
  // floor(f) from truncation toward zero (|f| < 2^31).
  T k = __builtin_convertvector(__builtin_convertvector(f, I), T);
  k = k > f ? k - 1.0f : k;
  T r = c - k * 0.693359375f - k * -2.12194440e-4f;
  T p = T{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  T y = p * r * r + r + 1.0f;
  I bits = (__builtin_convertvector(k, I) + 127) << 23;
  T scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  // Underflow gives 0 and NaN stays NaN, as in softmaxExp.
  T underflow = x < low ? T{} : x;
  x = x >= low ? y * scale : underflow;
}

/// s[j + u][r0 ...] (+)= sum_d k[j + u][d0 + d] * qt[d][r0 ...] for u < 4
/// and NV vectors of rows; qt has `stride` floats per dimension.
template <class V, int NV>
[[gnu::always_inline]] inline void
scores4(const float *qt, int64_t stride, const float *const *kRows, int64_t d0,
        int64_t n, float (*s)[kMaxTileRows], int64_t r0, bool accumulate) {
  using T = typename V::T;
  constexpr int64_t L = V::kLanes;
  T acc[4][NV];
  for (int u = 0; u < 4; ++u)
    for (int v = 0; v < NV; ++v) {
      if (accumulate)
        V::load(acc[u][v], s[u] + r0 + v * L);
      else
        V::broadcast(acc[u][v], 0.0f);
    }
  const float *k0 = kRows[0] + d0, *k1 = kRows[1] + d0, *k2 = kRows[2] + d0,
              *k3 = kRows[3] + d0;
  for (int64_t d = 0; d < n; ++d) {
    T qv[NV], kb[4];
    for (int v = 0; v < NV; ++v)
      V::load(qv[v], qt + d * stride + r0 + v * L);
    V::broadcast(kb[0], k0[d]);
    V::broadcast(kb[1], k1[d]);
    V::broadcast(kb[2], k2[d]);
    V::broadcast(kb[3], k3[d]);
    for (int u = 0; u < 4; ++u)
      for (int v = 0; v < NV; ++v)
        V::fma(acc[u][v], kb[u], qv[v]);
  }
  for (int u = 0; u < 4; ++u)
    for (int v = 0; v < NV; ++v)
      V::store(s[u] + r0 + v * L, acc[u][v]);
}

/// s[j][r] = q_r . k_j as dot products along the head dimension, for tiles
/// of too few rows to fill the lanes of scores4 (decode of one query head
/// per kv head); rows [t.rows, padded) get 0.
template <class V>
[[gnu::always_inline]] inline void
scoresDot(const Tile &t, int64_t padded, const float *const *kRows, int64_t nb,
          int64_t dk, float (*s)[kMaxTileRows]) {
  using T = typename V::T;
  constexpr int64_t L = V::kLanes;
  for (int64_t j = 0; j < nb; ++j) {
    const float *k = kRows[j];
    for (int64_t r = 0; r < t.rows; ++r) {
      const float *q = t.q[r];
      T acc[4], qv, kv;
      for (T &a : acc)
        V::broadcast(a, 0.0f);
      int64_t d = 0;
      for (; d + 4 * L <= dk; d += 4 * L)
        for (int u = 0; u < 4; ++u) {
          V::load(qv, q + d + u * L);
          V::load(kv, k + d + u * L);
          V::fma(acc[u], qv, kv);
        }
      for (; d + L <= dk; d += L) {
        V::load(qv, q + d);
        V::load(kv, k + d);
        V::fma(acc[0], qv, kv);
      }
      T lanes = (acc[0] + acc[1]) + (acc[2] + acc[3]);
      float sum = 0.0f;
      for (int64_t i = 0; i < L; ++i)
        sum += lanes[i];
      for (; d < dk; ++d)
        sum += q[d] * k[d];
      s[j][r] = sum;
    }
    for (int64_t r = t.rows; r < padded; ++r)
      s[j][r] = 0.0f;
  }
}

/// o[r0 + u][c ...] += sum_j p[j][r0 + u] * v[j][c ...] for u < U and NV
/// vectors of columns.
template <class V, int U, int NV>
[[gnu::always_inline]] inline void
accumulate(float *const *o, int64_t r0, int64_t c, const float *const *vRows,
           int64_t nb, const float (*p)[kMaxTileRows]) {
  using T = typename V::T;
  constexpr int64_t L = V::kLanes;
  T acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v)
      V::load(acc[u][v], o[r0 + u] + c + v * L);
  for (int64_t j = 0; j < nb; ++j) {
    T vv[NV], pb;
    for (int v = 0; v < NV; ++v)
      V::load(vv[v], vRows[j] + c + v * L);
    for (int u = 0; u < U; ++u) {
      V::broadcast(pb, p[j][r0 + u]);
      for (int v = 0; v < NV; ++v)
        V::fma(acc[u][v], pb, vv[v]);
    }
  }
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v)
      V::store(o[r0 + u] + c + v * L, acc[u][v]);
}

/// Rows [r0, r0 + U) of o += P V over all dv columns.
template <class V, int U>
[[gnu::always_inline]] inline void
accumulateRows(float *const *o, int64_t r0, int64_t dv,
               const float *const *vRows, int64_t nb,
               const float (*p)[kMaxTileRows]) {
  constexpr int64_t L = V::kLanes;
  int64_t c = 0;
  for (; c + 2 * L <= dv; c += 2 * L)
    accumulate<V, U, 2>(o, r0, c, vRows, nb, p);
  for (; c + L <= dv; c += L)
    accumulate<V, U, 1>(o, r0, c, vRows, nb, p);
  for (; c < dv; ++c)
    for (int u = 0; u < U; ++u) {
      float sum = o[r0 + u][c];
      for (int64_t j = 0; j < nb; ++j)
        sum += p[j][r0 + u] * vRows[j][c];
      o[r0 + u][c] = sum;
    }
}

/// Attends the rows of `t` to the keys of one kv head: `rowsOf(j0, nb,
/// kRows, vRows)` sets the key and value row pointers of keys [j0, j0 +
/// nb). Writes the normalized outputs (zeros for rows without keys).
template <class V, class RowsOf>
[[gnu::always_inline]] inline void
attendTile(const Tile &t, int64_t dk, int64_t dv, float scale, RowsOf rowsOf) {
  constexpr int64_t L = V::kLanes;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  int64_t rows = t.rows;
  int64_t padded = (rows + L - 1) / L * L; // rows past `rows` score 0 keys
  int64_t chunk = std::min(dk, kPackedFloats / padded);
  alignas(64) float qt[kPackedFloats];
  // Scores of keys no row of a vector sees are skipped (and masked): zeroed
  // once so that they are never indeterminate.
  alignas(64) float s[kKeyBlock][kMaxTileRows] = {};
  alignas(64) float m[kMaxTileRows], l[kMaxTileRows], alpha[kMaxTileRows],
      blockSum[kMaxTileRows];
  // Keys that row r, and any row of vector v, sees: positions along the
  // causal diagonal see fewer than the tile's last.
  int64_t keys[kMaxTileRows], vectorKeys[kMaxTileRows];
  int64_t maxKeys = 0;
  for (int64_t r = 0; r < padded; ++r) {
    keys[r] = r < rows ? t.keys[r] : 0;
    maxKeys = std::max(maxKeys, keys[r]);
    vectorKeys[r / L] =
        r % L == 0 ? keys[r] : std::max(vectorKeys[r / L], keys[r]);
    m[r] = kNegInf;
    l[r] = 0.0f;
  }
  for (int64_t r = 0; r < rows; ++r)
    std::fill_n(t.o[r], dv, 0.0f);
  auto pack = [&](int64_t d0, int64_t n) {
    for (int64_t d = 0; d < n; ++d)
      for (int64_t r = 0; r < padded; ++r)
        qt[d * padded + r] = r < rows ? t.q[r][d0 + d] : 0.0f;
  };
  // A row or two would leave most lanes of the score tiles empty.
  bool dotForm = rows * 4 <= L;
  if (!dotForm && chunk == dk)
    pack(0, dk);
  // Three spare entries let the score tiles run over whole groups of 4 keys.
  const float *kRows[kKeyBlock + 3], *vRows[kKeyBlock];
  for (int64_t j0 = 0; j0 < maxKeys; j0 += kKeyBlock) {
    int64_t nb = std::min(kKeyBlock, maxKeys - j0);
    rowsOf(j0, nb, kRows, vRows);
    int64_t nb4 = (nb + 3) / 4 * 4;
    for (int64_t j = nb; j < nb4; ++j)
      kRows[j] = kRows[nb - 1]; // scores past nb are never read
    if (dotForm)
      scoresDot<V>(t, padded, kRows, nb, dk, s);
    for (int64_t d0 = 0; d0 < dk && !dotForm; d0 += chunk) {
      int64_t n = std::min(chunk, dk - d0);
      if (chunk != dk)
        pack(d0, n);
      for (int64_t j = 0; j < nb4; j += 4) {
        int64_t r0 = 0;
        for (; r0 + 2 * L <= padded; r0 += 2 * L)
          if (j0 + j < std::max(vectorKeys[r0 / L], vectorKeys[r0 / L + 1]))
            scores4<V, 2>(qt, padded, kRows + j, d0, n, s + j, r0, d0 > 0);
        for (; r0 < padded; r0 += L)
          if (j0 + j < vectorKeys[r0 / L])
            scores4<V, 1>(qt, padded, kRows + j, d0, n, s + j, r0, d0 > 0);
      }
    }

    // Online softmax across rows, a vector of rows at a time. Keys a row
    // may not see get probability 0 (selected, not exp(-inf - m), which is
    // NaN while a row has seen no key).
    using T = typename V::T;
    using Mask = decltype(T{} < T{});
    for (int64_t r0 = 0; r0 < padded; r0 += L) {
      T visible, negInf = T{} + kNegInf, blockMax = negInf;
      for (int64_t i = 0; i < L; ++i)
        visible[i] =
            static_cast<float>(std::clamp<int64_t>(keys[r0 + i] - j0, 0, nb));
      for (int64_t j = 0; j < nb; ++j) {
        T x;
        V::load(x, s[j] + r0);
        Mask seen = (T{} + static_cast<float>(j)) < visible;
        x = seen ? x * scale : negInf;
        V::store(s[j] + r0, x);
        blockMax = blockMax > x ? blockMax : x;
      }
      T oldMax, sum = T{};
      V::load(oldMax, m + r0);
      T newMax = oldMax > blockMax ? oldMax : blockMax;
      T a = oldMax - newMax;
      expInPlace(a);
      a = newMax == oldMax ? (T{} + 1.0f) : a;
      V::store(m + r0, newMax);
      V::store(alpha + r0, a);
      for (int64_t j = 0; j < nb; ++j) {
        T x;
        V::load(x, s[j] + r0);
        Mask seen = (T{} + static_cast<float>(j)) < visible;
        x -= newMax;
        expInPlace(x);
        x = seen ? x : T{};
        V::store(s[j] + r0, x);
        sum += x;
      }
      V::store(blockSum + r0, sum);
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (alpha[r] != 1.0f && l[r] > 0.0f) {
        float *o = t.o[r];
#pragma omp simd
        for (int64_t i = 0; i < dv; ++i)
          o[i] *= alpha[r];
      }
      l[r] = l[r] * alpha[r] + blockSum[r];
    }

    // Keys of the block that rows [r0, r0 + n) see: P is 0 past them.
    auto seenBy = [&](int64_t r0, int64_t n) {
      int64_t most = *std::max_element(keys + r0, keys + r0 + n);
      return std::clamp<int64_t>(most - j0, 0, nb);
    };
    int64_t r0 = 0;
    for (; r0 + 4 <= rows; r0 += 4)
      accumulateRows<V, 4>(t.o, r0, dv, vRows, seenBy(r0, 4), s);
    for (; r0 < rows; ++r0)
      accumulateRows<V, 1>(t.o, r0, dv, vRows, seenBy(r0, 1), s);
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (l[r] == 0.0f)
      continue; // no keys: the output stays zero
    float inv = 1.0f / l[r];
    float *o = t.o[r];
#pragma omp simd
    for (int64_t i = 0; i < dv; ++i)
      o[i] *= inv;
  }
}

} // namespace kiln::cpu::tiled

#endif // KILN_RUNTIME_CPU_ATTENTIONTILE_H
