// Kernels over the packed (FP8 or bf16) latent cache. With one kv head every
// query head reads the same rows, so attention dequantizes a tile of keys at a
// time into fp32 on the stack and lets all the heads of its work item (up to
// 128: a decode row of DeepSeek-V3 is a single item) use it: each cached byte
// is read from memory and decoded once per query row, not once per head. Work
// items are query rows with their heads; prefill items take several rows of one
// sequence, which share the tiles too. Decode has fewer items than threads
// and splits the context as attentionPaged does.
//
// The AVX2 path decodes e4m3 through f16 (an e4m3 code shifted into the f16
// fields is its value times 2^-8, subnormals included, so F16C converts it
// exactly) and computes scores and the value sum in register blocks of
// several heads and keys, which load each tile vector once for several FMAs.
#include "runtime/src/cpu/PagedPacked.h"

#include "runtime/src/cpu/PagedAttention.h"

#include "kiln/Float.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace kiln::cpu {
namespace {

constexpr int64_t kGroup = PackedRowLayout::kGroup;
constexpr float kE4m3Max = 448.0f;
// Keeps the scale of an all-zero group finite.
constexpr float kMinAmax = 1e-4f;

constexpr int64_t kMaxItemHeads = 128;
// (query row, head) pairs per work item: the rows of a prefill item.
constexpr int64_t kMaxPairs = 256;
constexpr int64_t kMaxItemRows = kMaxPairs;
// The key tile: as many keys as fit in kTileFloats, at most kMaxTileKeys
// (16 DeepSeek rows, 36 KiB: more would leave L1 and L2 for longer).
constexpr int64_t kTileFloats = kMaxPackedColumns;
constexpr int64_t kMaxTileKeys = 16;
// Fewer keys per split would spend more on the merge than the split saves.
constexpr int64_t kMinSplitKeys = 256;

const std::byte *rowAt(const std::byte *slot, int64_t rowBytes,
                       const int32_t *table, int64_t blockTokens, int64_t pos) {
  int64_t block = table[pos / blockTokens];
  return slot + (block * blockTokens + pos % blockTokens) * rowBytes;
}

float scaleAt(const std::byte *row, PackedRowLayout l, int64_t group) {
  float s;
  std::memcpy(&s, row + l.scaleOffset() + group * 4, sizeof(s));
  return s;
}

void quantizeRow(const float *x, PackedRowLayout l, std::byte *row) {
  auto *codes = reinterpret_cast<uint8_t *>(row);
  for (int64_t g = 0; g < l.scaleGroups(); ++g) {
    int64_t c0 = g * kGroup, c1 = std::min(c0 + kGroup, l.quantColumns);
    float amax = 0.0f;
    for (int64_t c = c0; c < c1; ++c)
      amax = std::max(amax, std::fabs(x[c]));
    float s = std::max(amax, kMinAmax) / kE4m3Max;
    std::memcpy(row + l.scaleOffset() + g * 4, &s, sizeof(s));
    for (int64_t c = c0; c < c1; ++c)
      codes[c] = floatToE4m3(x[c] / s);
  }
  for (int64_t c = 0; c < l.bf16Columns; ++c) {
    uint16_t bits = floatToBf16(x[l.quantColumns + c]);
    std::memcpy(row + l.bf16Offset() + 2 * c, &bits, sizeof(bits));
  }
  // Zero padding keeps rows a function of their values.
  std::memset(row + l.quantColumns, 0, l.scaleOffset() - l.quantColumns);
  int64_t used = l.bf16Offset() + 2 * l.bf16Columns;
  std::memset(row + used, 0, l.rowBytes() - used);
}

/// Columns [c0, c1) of a row as fp32 into out[0, c1 - c0).
[[gnu::always_inline]] inline void dequantizePortable(const std::byte *row,
                                                      PackedRowLayout l,
                                                      int64_t c0, int64_t c1,
                                                      float *out) {
  const auto *codes = reinterpret_cast<const uint8_t *>(row);
  for (int64_t c = c0; c < std::min(c1, l.quantColumns);) {
    int64_t g = c / kGroup,
            end = std::min(c1, std::min((g + 1) * kGroup, l.quantColumns));
    float s = scaleAt(row, l, g);
    for (; c < end; ++c)
      out[c - c0] = e4m3ToFloat(codes[c]) * s;
  }
  for (int64_t c = std::max(c0, l.quantColumns); c < c1; ++c) {
    uint16_t bits;
    std::memcpy(&bits, row + l.bf16Offset() + 2 * (c - l.quantColumns),
                sizeof(bits));
    out[c - c0] = bf16ToFloat(bits);
  }
}

// Helpers inline into the entry points below, which the gather and
// attendImpl<true> call (an always_inline function cannot carry a target).
#define KILN_AVX2 __attribute__((target("avx2,fma,f16c"), always_inline))
#define KILN_AVX2_ENTRY __attribute__((target("avx2,fma,f16c")))

/// 16 e4m3 codes times `scale256` (the group's scale times 2^8).
KILN_AVX2 inline void decode16(const uint8_t *codes, __m256 scale256,
                               float *out) {
  __m256i w = _mm256_cvtepi8_epi16(
      _mm_loadu_si128(reinterpret_cast<const __m128i *>(codes)));
  // Sign extension puts the sign in bits 14-15 after the shift: keep 15.
  __m256i h = _mm256_and_si256(_mm256_slli_epi16(w, 7),
                               _mm256_set1_epi16(static_cast<short>(0xbf80)));
  // The NaN code (magnitude 0x7f) carries into bit 14 when incremented:
  // setting that bit makes the f16 exponent all ones, a NaN as well.
  __m256i carry = _mm256_and_si256(_mm256_add_epi16(h, _mm256_set1_epi16(0x80)),
                                   _mm256_set1_epi16(0x4000));
  h = _mm256_or_si256(h, carry);
  __m256 lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  __m256 hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
  _mm256_storeu_ps(out, _mm256_mul_ps(lo, scale256));
  _mm256_storeu_ps(out + 8, _mm256_mul_ps(hi, scale256));
}

/// dequantizePortable.
KILN_AVX2_ENTRY void dequantizeAvx2(const std::byte *row, PackedRowLayout l,
                                    int64_t c0, int64_t c1, float *out) {
  const auto *codes = reinterpret_cast<const uint8_t *>(row);
  int64_t quantEnd = std::min(c1, l.quantColumns);
  for (int64_t c = c0; c < quantEnd;) {
    int64_t g = c / kGroup, end = std::min(quantEnd, (g + 1) * kGroup);
    float s = scaleAt(row, l, g);
    __m256 s256 = _mm256_set1_ps(s * 256.0f);
    for (; c + 16 <= end; c += 16)
      decode16(codes + c, s256, out + (c - c0));
    for (; c < end; ++c)
      out[c - c0] = e4m3ToFloat(codes[c]) * s;
  }
  const std::byte *bf16 = row + l.bf16Offset();
  int64_t c = std::max(c0, l.quantColumns);
  for (; c + 8 <= c1; c += 8) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(
        reinterpret_cast<const __m128i *>(bf16 + 2 * (c - l.quantColumns))));
    _mm256_storeu_ps(out + (c - c0),
                     _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; c < c1; ++c) {
    uint16_t bits;
    std::memcpy(&bits, bf16 + 2 * (c - l.quantColumns), sizeof(bits));
    out[c - c0] = bf16ToFloat(bits);
  }
}

/// A load that stays one: GCC would otherwise fold it into each FMA that
/// uses the value, loading it again per use, and the register blocks below
/// would be bound by loads instead of FMAs.
KILN_AVX2 inline __m256 loadOnce(const float *p) {
  __m256 v = _mm256_loadu_ps(p);
  asm("" : "+x"(v));
  return v;
}

KILN_AVX2 inline float hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

/// p[h * pStride + j] = scale * q_h . k_j for H heads (rows dk apart) and J
/// keys (rows kStride apart).
template <int H, int J>
KILN_AVX2 inline void scoresBlock(const float *q, const float *k,
                                  int64_t kStride, int64_t dk, float scale,
                                  float *p, int64_t pStride) {
  __m256 acc[H][J];
  for (int h = 0; h < H; ++h)
    for (int j = 0; j < J; ++j)
      acc[h][j] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= dk; i += 8) {
    __m256 kv[J];
    for (int j = 0; j < J; ++j)
      kv[j] = loadOnce(k + j * kStride + i);
    for (int h = 0; h < H; ++h) {
      __m256 qv = loadOnce(q + h * dk + i);
      for (int j = 0; j < J; ++j)
        acc[h][j] = _mm256_fmadd_ps(qv, kv[j], acc[h][j]);
    }
  }
  for (int h = 0; h < H; ++h)
    for (int j = 0; j < J; ++j) {
      float s = hsum(acc[h][j]);
      for (int64_t t = i; t < dk; ++t)
        s += q[h * dk + t] * k[j * kStride + t];
      p[h * pStride + j] = s * scale;
    }
}

template <int H>
KILN_AVX2 inline void scoresHeads(const float *q, const float *tile,
                                  int64_t stride, int64_t n, int64_t dk,
                                  float scale, float *p, int64_t pStride) {
  int64_t j = 0;
  for (; j + 2 <= n; j += 2)
    scoresBlock<H, 2>(q, tile + j * stride, stride, dk, scale, p + j, pStride);
  if (j < n)
    scoresBlock<H, 1>(q, tile + j * stride, stride, dk, scale, p + j, pStride);
}

KILN_AVX2_ENTRY void scoresAvx2(const float *q, const float *tile,
                                int64_t stride, int64_t n, int64_t nh,
                                int64_t dk, float scale, float *p,
                                int64_t pStride) {
  int64_t h = 0;
  for (; h + 4 <= nh; h += 4)
    scoresHeads<4>(q + h * dk, tile, stride, n, dk, scale, p + h * pStride,
                   pStride);
  for (; h < nh; ++h)
    scoresHeads<1>(q + h * dk, tile, stride, n, dk, scale, p + h * pStride,
                   pStride);
}

/// o_h = alpha_h o_h + sum_j p[h * pStride + j] v_j for H heads (outputs dv
/// apart) over columns [i0, i0 + 8 C), keys rows `stride` apart.
template <int H, int C>
KILN_AVX2 inline void accumulateBlock(const float *p, int64_t pStride,
                                      const float *alpha, const float *v,
                                      int64_t stride, int64_t n, float *o,
                                      int64_t dv, int64_t i0) {
  __m256 acc[H][C];
  for (int h = 0; h < H; ++h) {
    __m256 a = _mm256_set1_ps(alpha[h]);
    for (int c = 0; c < C; ++c)
      acc[h][c] = _mm256_mul_ps(a, _mm256_loadu_ps(o + h * dv + i0 + 8 * c));
  }
  for (int64_t j = 0; j < n; ++j) {
    __m256 vv[C];
    for (int c = 0; c < C; ++c)
      vv[c] = loadOnce(v + j * stride + i0 + 8 * c);
    for (int h = 0; h < H; ++h) {
      __m256 w = _mm256_broadcast_ss(p + h * pStride + j);
      for (int c = 0; c < C; ++c)
        acc[h][c] = _mm256_fmadd_ps(w, vv[c], acc[h][c]);
    }
  }
  for (int h = 0; h < H; ++h)
    for (int c = 0; c < C; ++c)
      _mm256_storeu_ps(o + h * dv + i0 + 8 * c, acc[h][c]);
}

template <int H>
KILN_AVX2 inline void accumulateHeads(const float *p, int64_t pStride,
                                      const float *alpha, const float *v,
                                      int64_t stride, int64_t n, float *o,
                                      int64_t dv) {
  int64_t i = 0;
  for (; i + 32 <= dv; i += 32)
    accumulateBlock<H, 4>(p, pStride, alpha, v, stride, n, o, dv, i);
  for (; i + 8 <= dv; i += 8)
    accumulateBlock<H, 1>(p, pStride, alpha, v, stride, n, o, dv, i);
  for (; i < dv; ++i)
    for (int h = 0; h < H; ++h) {
      float sum = alpha[h] * o[h * dv + i];
      for (int64_t j = 0; j < n; ++j)
        sum += p[h * pStride + j] * v[j * stride + i];
      o[h * dv + i] = sum;
    }
}

KILN_AVX2_ENTRY void accumulateAvx2(const float *p, int64_t pStride,
                                    const float *alpha, const float *v,
                                    int64_t stride, int64_t n, int64_t nh,
                                    float *o, int64_t dv) {
  int64_t h = 0;
  for (; h + 2 <= nh; h += 2)
    accumulateHeads<2>(p + h * pStride, pStride, alpha + h, v, stride, n,
                       o + h * dv, dv);
  if (h < nh)
    accumulateHeads<1>(p + h * pStride, pStride, alpha + h, v, stride, n,
                       o + h * dv, dv);
}

#undef KILN_AVX2
#undef KILN_AVX2_ENTRY

[[gnu::always_inline]] inline void
scoresPortable(const float *q, const float *tile, int64_t stride, int64_t n,
               int64_t nh, int64_t dk, float scale, float *p, int64_t pStride) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t h = 0; h < nh; ++h)
      p[h * pStride + j] = dot(q + h * dk, tile + j * stride, dk) * scale;
}

[[gnu::always_inline]] inline void
accumulatePortable(const float *p, int64_t pStride, const float *alpha,
                   const float *v, int64_t stride, int64_t n, int64_t nh,
                   float *o, int64_t dv) {
  for (int64_t h = 0; h < nh; ++h) {
    float *oh = o + h * dv;
    const float *ph = p + h * pStride;
    float a = alpha[h];
    if (a != 1.0f) {
#pragma omp simd
      for (int64_t i = 0; i < dv; ++i)
        oh[i] *= a;
    }
    // Four keys per pass over the output row.
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      const float *v0 = v + j * stride, *v1 = v0 + stride, *v2 = v1 + stride,
                  *v3 = v2 + stride;
      float p0 = ph[j], p1 = ph[j + 1], p2 = ph[j + 2], p3 = ph[j + 3];
#pragma omp simd
      for (int64_t i = 0; i < dv; ++i)
        oh[i] += (p0 * v0[i] + p1 * v1[i]) + (p2 * v2[i] + p3 * v3[i]);
    }
    for (; j < n; ++j) {
      const float *vj = v + j * stride;
      float w = ph[j];
#pragma omp simd
      for (int64_t i = 0; i < dv; ++i)
        oh[i] += w * vj[i];
    }
  }
}

struct PackedArgs {
  const float *q;
  const std::byte *slot;
  PackedRowLayout layout;
  BlockTables tables;
  const int32_t *positions, *kvLengths;
  int64_t seq, heads, dk, dv;
  float scale;
};

/// Keys query row `row` (of sequence b) attends to.
int64_t keyCount(const PackedArgs &a, int64_t row, int64_t b) {
  int32_t pos = a.positions[row];
  return pos < 0 ? 0 : std::min<int64_t>(pos + 1, a.kvLengths[b]);
}

/// Tile rows are padded to whole cache lines.
int64_t tileStride(int64_t dk) { return (dk + 15) / 16 * 16; }

int64_t tileKeys(int64_t dk) {
  return std::clamp<int64_t>(kTileFloats / tileStride(dk), 1, kMaxTileKeys);
}

/// A work item: query rows [row0, row0 + rows) of sequence b (consecutive
/// rows of q), heads [h0, h0 + nh), keys [begin, end) of each row's range.
/// out[r] is where row r's output of head h0 starts (heads dv apart); the
/// online softmax state of (r, h) is m[r * nh + h], l[r * nh + h], and the
/// outputs are left unnormalized: o = sum_j exp(s_j - m) v_j, l = sum_j
/// exp(s_j - m); an empty range leaves o = 0, m = -inf, l = 0.
struct Item {
  int64_t b, row0, rows, h0, nh, begin, end;
  float *const *out;
  float *m, *l;
};

template <bool Avx2>
[[gnu::always_inline]] inline void attendImpl(const PackedArgs &a,
                                              const Item &it) {
  int64_t dk = a.dk, dv = a.dv, nh = it.nh;
  int64_t stride = tileStride(dk), keys = tileKeys(dk);
  int64_t rowBytes = a.layout.rowBytes();
  alignas(64) float tile[kTileFloats];
  float p[kMaxItemHeads * kMaxTileKeys];
  float alpha[kMaxItemHeads];
  int64_t rowEnd[kMaxItemRows];
  int64_t end = it.begin;
  for (int64_t r = 0; r < it.rows; ++r) {
    rowEnd[r] = std::min(it.end, keyCount(a, it.row0 + r, it.b));
    end = std::max(end, rowEnd[r]);
    for (int64_t h = 0; h < nh; ++h) {
      std::fill_n(it.out[r] + h * dv, dv, 0.0f);
      it.m[r * nh + h] = -std::numeric_limits<float>::infinity();
      it.l[r * nh + h] = 0.0f;
    }
  }
  const int32_t *table = a.tables.ids + it.b * a.tables.stride;
  for (int64_t j0 = it.begin; j0 < end; j0 += keys) {
    int64_t nb = std::min(keys, end - j0);
    for (int64_t j = 0; j < nb; ++j) {
      const std::byte *row =
          rowAt(a.slot, rowBytes, table, a.tables.blockTokens, j0 + j);
      // The next tile's rows arrive while this one is computed.
      if (j0 + keys + j < end) {
        auto next = reinterpret_cast<uintptr_t>(rowAt(
            a.slot, rowBytes, table, a.tables.blockTokens, j0 + keys + j));
        for (uintptr_t line = next & ~uintptr_t{63}; line < next + rowBytes;
             line += 64)
          __builtin_prefetch(reinterpret_cast<const void *>(line));
      }
      if constexpr (Avx2)
        dequantizeAvx2(row, a.layout, 0, dk, tile + j * stride);
      else
        dequantizePortable(row, a.layout, 0, dk, tile + j * stride);
    }
    for (int64_t r = 0; r < it.rows; ++r) {
      int64_t n = std::min(nb, rowEnd[r] - j0);
      if (n <= 0)
        continue;
      const float *q = a.q + ((it.row0 + r) * a.heads + it.h0) * dk;
      if constexpr (Avx2)
        scoresAvx2(q, tile, stride, n, nh, dk, a.scale, p, kMaxTileKeys);
      else
        scoresPortable(q, tile, stride, n, nh, dk, a.scale, p, kMaxTileKeys);
      float *m = it.m + r * nh, *l = it.l + r * nh;
      for (int64_t h = 0; h < nh; ++h) {
        float *ph = p + h * kMaxTileKeys;
        float blockMax = ph[0];
        for (int64_t j = 1; j < n; ++j)
          blockMax = std::max(blockMax, ph[j]);
        float newMax = std::max(m[h], blockMax);
        alpha[h] = 1.0f;
        if (newMax > m[h] && l[h] > 0.0f) {
          alpha[h] = softmaxExp(m[h] - newMax);
          l[h] *= alpha[h];
        }
        m[h] = newMax;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < n; ++j) {
          ph[j] = softmaxExp(ph[j] - newMax);
          sum += ph[j];
        }
        l[h] += sum;
      }
      if constexpr (Avx2)
        accumulateAvx2(p, kMaxTileKeys, alpha, tile, stride, n, nh, it.out[r],
                       dv);
      else
        accumulatePortable(p, kMaxTileKeys, alpha, tile, stride, n, nh,
                           it.out[r], dv);
    }
  }
}

void attendGeneric(const PackedArgs &a, const Item &it) {
  attendImpl<false>(a, it);
}

__attribute__((target("avx2,fma,f16c"))) void attendAvx2(const PackedArgs &a,
                                                         const Item &it) {
  attendImpl<true>(a, it);
}

} // namespace

void kvAppendPagedPacked(const float *x, const int32_t *positions,
                         int64_t batch, int64_t seq, PackedRowLayout layout,
                         std::byte *slotData, const int32_t *blockTables,
                         int64_t tableStride, int64_t blockTokens) {
  int64_t rowBytes = layout.rowBytes();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s) {
      int32_t p = positions[b * seq + s];
      if (p < 0)
        continue;
      int64_t block = blockTables[b * tableStride + p / blockTokens];
      quantizeRow(x + (b * seq + s) * layout.columns(), layout,
                  slotData +
                      (block * blockTokens + p % blockTokens) * rowBytes);
    }
}

void gatherPagedPacked(const std::byte *slotData, PackedRowLayout layout,
                       const int32_t *table, int64_t blockTokens,
                       int64_t tokens, int64_t column, int64_t count,
                       float *out) {
  int64_t rowBytes = layout.rowBytes();
  bool avx2 = vectorKernelsActive();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    const std::byte *row = rowAt(slotData, rowBytes, table, blockTokens, t);
    if (avx2)
      dequantizeAvx2(row, layout, column, column + count, out + t * count);
    else
      dequantizePortable(row, layout, column, column + count, out + t * count);
  }
}

void attentionPagedPacked(const float *q, const std::byte *slotData,
                          PackedRowLayout layout, BlockTables tables,
                          const int32_t *positions, const int32_t *kvLengths,
                          int64_t batch, int64_t seq, int64_t heads, int64_t dk,
                          int64_t dv, float scale, float *out, float *scratch,
                          int64_t scratchFloats) {
  PackedArgs args{q,   slotData, layout, tables, positions, kvLengths,
                  seq, heads,    dk,     dv,     scale};
  int64_t queries = batch * seq;
  if (queries == 0 || heads == 0)
    return;
  // Heads are divided evenly among the fewest chunks of at most
  // kMaxItemHeads.
  int64_t chunks = (heads + kMaxItemHeads - 1) / kMaxItemHeads;
  int64_t chunkHeads = (heads + chunks - 1) / chunks;
  int64_t maxKeys = 0;
  for (int64_t b = 0; b < batch; ++b)
    maxKeys = std::max<int64_t>(maxKeys, kvLengths[b]);
  int64_t threads = omp_get_max_threads();
  int64_t perSplit = queries * heads * (dv + 2);
  int64_t splits = 1;
  if (queries * chunks < threads)
    splits = std::min({(threads + queries * chunks - 1) / (queries * chunks),
                       kMaxAttentionSplits, maxKeys / kMinSplitKeys,
                       scratchFloats / perSplit});
  splits = std::max<int64_t>(splits, 1);
  auto attend = vectorKernelsActive() ? attendAvx2 : attendGeneric;

  if (splits == 1) {
    // Rows of one sequence share an item (and its tiles) up to kMaxPairs
    // (row, head) pairs, unless that leaves threads idle.
    int64_t rowsPerItem = std::clamp<int64_t>(
        std::min(kMaxPairs / chunkHeads, queries * chunks / threads), 1, seq);
    int64_t rowBlocks = (seq + rowsPerItem - 1) / rowsPerItem;
    int64_t items = batch * rowBlocks * chunks;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      int64_t c = item % chunks, rest = item / chunks;
      int64_t rb = rest % rowBlocks, b = rest / rowBlocks;
      int64_t s0 = rb * rowsPerItem, rows = std::min(rowsPerItem, seq - s0);
      int64_t h0 = c * chunkHeads, nh = std::min(chunkHeads, heads - h0);
      int64_t row0 = b * seq + s0;
      float *rowOut[kMaxItemRows];
      float m[kMaxPairs], l[kMaxPairs];
      for (int64_t r = 0; r < rows; ++r)
        rowOut[r] = out + ((row0 + r) * heads + h0) * dv;
      Item it{
          b,      row0, rows, h0, nh, 0, std::numeric_limits<int64_t>::max(),
          rowOut, m,    l};
      attend(args, it);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t h = 0; h < nh; ++h) {
          if (l[r * nh + h] == 0.0f)
            continue; // no keys: the output stays zero
          float inv = 1.0f / l[r * nh + h];
          float *o = rowOut[r] + h * dv;
#pragma omp simd
          for (int64_t i = 0; i < dv; ++i)
            o[i] *= inv;
        }
    }
    return;
  }

  // Split s of query row r keeps its partial output of head h at
  // scratch[((r * splits + s) * heads + h) * dv] and (m, l) at
  // stats[2 * ((r * splits + s) * heads + h)].
  float *stats = scratch + queries * splits * heads * dv;
  int64_t tile = tileKeys(dk);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < queries * chunks * splits; ++unit) {
      int64_t split = unit % splits, item = unit / splits;
      int64_t c = item % chunks, row = item / chunks;
      int64_t h0 = c * chunkHeads, nh = std::min(chunkHeads, heads - h0);
      int64_t b = row / seq;
      // Ranges are whole tiles so that splits add no partial tiles.
      int64_t n = keyCount(args, row, b);
      int64_t tiles = (n + tile - 1) / tile;
      int64_t span = (tiles + splits - 1) / splits * tile;
      int64_t begin = std::min(n, split * span);
      int64_t base = (row * splits + split) * heads + h0;
      float *rowOut[1] = {scratch + base * dv};
      float m[kMaxItemHeads], l[kMaxItemHeads];
      Item it{b,      row, 1, h0, nh, begin, std::min(n, begin + span),
              rowOut, m,   l};
      attend(args, it);
      for (int64_t h = 0; h < nh; ++h) {
        stats[2 * (base + h)] = m[h];
        stats[2 * (base + h) + 1] = l[h];
      }
    }
#pragma omp for schedule(static)
    for (int64_t rh = 0; rh < queries * heads; ++rh) {
      mergeSplits(stats, scratch, rh / heads, rh % heads, splits, heads, dv,
                  out + rh * dv);
    }
  }
}

} // namespace kiln::cpu
