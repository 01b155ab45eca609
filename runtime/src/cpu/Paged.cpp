// Kernels over the paged KV cache. Attention resolves the block tables once
// per 64-key block into row pointers. Prefill runs the tiles of Attention.cpp
// (AttentionTile.h): query rows of several positions and heads share every
// key and value row they load. Decode has one query row per sequence and
// attends per row (up to 16 query heads of one kv head per work item, online
// softmax in 64-key blocks); at a small batch it has fewer work items than
// threads (absorbed MLA at batch 1 has a single one), so the context is then
// split across threads and the partial softmax states are merged.
#include "runtime/src/cpu/PagedAttention.h"
#include "runtime/src/cpu/AttentionTile.h"
#include "runtime/src/cpu/Kernels.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace kiln::cpu {

void kvAppendPaged(const float *x, const int32_t *positions, int64_t batch,
                   int64_t seq, int64_t entry, float *slotData,
                   const int32_t *blockTables, int64_t tableStride,
                   int64_t blockTokens) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s) {
      int32_t p = positions[b * seq + s];
      if (p < 0)
        continue;
      int64_t block = blockTables[b * tableStride + p / blockTokens];
      std::memcpy(slotData + (block * blockTokens + p % blockTokens) * entry,
                  x + (b * seq + s) * entry,
                  static_cast<size_t>(entry) * sizeof(float));
    }
}

namespace {

constexpr int64_t kHeadChunk = 16; // query heads per work item
constexpr int64_t kKeyBlock = 64;  // keys per softmax block
// Fewer keys per split would spend more on the merge than the split saves.
constexpr int64_t kMinSplitKeys = 4 * kKeyBlock;
constexpr int64_t kAhead = 8; // rows prefetched ahead

struct PagedArgs {
  const float *q;
  PagedView k, v;
  BlockTables tables;
  const int32_t *positions, *kvLengths;
  int64_t seq, heads, kvHeads, dk, dv;
  float scale;
};

/// The unnormalized state of the online softmax of `nh` heads over a key
/// range: o[h * oStride + i] = sum_j exp(s_j - m[h]) v_j[i], l[h] = sum_j
/// exp(s_j - m[h]). An empty range leaves o = 0, m = -inf, l = 0.
struct Partial {
  float *o;
  int64_t oStride;
  float m[kHeadChunk], l[kHeadChunk];
};

[[gnu::always_inline]] inline void prefetchRow(const float *row, int64_t n) {
  for (int64_t i = 0; i < n; i += 16)
    __builtin_prefetch(row + i);
}

/// Attends query row `row` (of sequence b), heads [h0, h0 + nh) of kv head
/// kvh, to keys [begin, end).
[[gnu::always_inline]] inline void attendRangeImpl(const PagedArgs &a,
                                                   int64_t row, int64_t b,
                                                   int64_t kvh, int64_t h0,
                                                   int64_t nh, int64_t begin,
                                                   int64_t end, Partial &part) {
  for (int64_t h = 0; h < nh; ++h) {
    float *oh = part.o + h * part.oStride;
    for (int64_t i = 0; i < a.dv; ++i)
      oh[i] = 0.0f;
    part.m[h] = -std::numeric_limits<float>::infinity();
    part.l[h] = 0.0f;
  }
  const float *q = a.q + (row * a.heads + h0) * a.dk;
  const int32_t *table = a.tables.ids + b * a.tables.stride;
  int64_t bt = a.tables.blockTokens;
  const float *kBase = a.k.data + a.k.offset + kvh * a.k.headStride;
  const float *vBase = a.v.data + a.v.offset + kvh * a.v.headStride;
  // Rows of one of several kv heads are far apart (a page apart for 8 x 128
  // heads): hardware prefetchers do not follow, so fetch ahead.
  bool strided = a.kvHeads > 1;
  float p[kHeadChunk][kKeyBlock];
  const float *kRows[kKeyBlock], *vRows[kKeyBlock];
  for (int64_t j0 = begin; j0 < end; j0 += kKeyBlock) {
    int64_t nb = std::min(kKeyBlock, end - j0);
    for (int64_t j = 0; j < nb; ++j) {
      int64_t pos = j0 + j;
      int64_t tokenRow = table[pos / bt] * bt + pos % bt;
      kRows[j] = kBase + tokenRow * a.k.rowStride;
      vRows[j] = vBase + tokenRow * a.v.rowStride;
    }
    for (int64_t j = 0; j < nb; ++j) {
      if (strided && j + kAhead < nb) {
        prefetchRow(kRows[j + kAhead], a.dk);
        prefetchRow(vRows[j + kAhead], a.dv);
      }
      for (int64_t h = 0; h < nh; ++h)
        p[h][j] = dot(q + h * a.dk, kRows[j], a.dk) * a.scale;
    }
    for (int64_t h = 0; h < nh; ++h) {
      float blockMax = p[h][0];
      for (int64_t j = 1; j < nb; ++j)
        blockMax = std::max(blockMax, p[h][j]);
      float newMax = std::max(part.m[h], blockMax);
      if (newMax > part.m[h] && part.l[h] > 0.0f) {
        float alpha = softmaxExp(part.m[h] - newMax);
        part.l[h] *= alpha;
        float *oh = part.o + h * part.oStride;
#pragma omp simd
        for (int64_t i = 0; i < a.dv; ++i)
          oh[i] *= alpha;
      }
      part.m[h] = newMax;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < nb; ++j) {
        p[h][j] = softmaxExp(p[h][j] - newMax);
        sum += p[h][j];
      }
      part.l[h] += sum;
    }
    // o[h] += sum_j p[h][j] v[j], four keys per pass over the output rows.
    int64_t j = 0;
    for (; j + 4 <= nb; j += 4) {
      const float *v0 = vRows[j], *v1 = vRows[j + 1], *v2 = vRows[j + 2],
                  *v3 = vRows[j + 3];
      for (int64_t h = 0; h < nh; ++h) {
        float p0 = p[h][j], p1 = p[h][j + 1], p2 = p[h][j + 2],
              p3 = p[h][j + 3];
        float *oh = part.o + h * part.oStride;
#pragma omp simd
        for (int64_t i = 0; i < a.dv; ++i)
          oh[i] += (p0 * v0[i] + p1 * v1[i]) + (p2 * v2[i] + p3 * v3[i]);
      }
    }
    for (; j < nb; ++j) {
      const float *vj = vRows[j];
      for (int64_t h = 0; h < nh; ++h) {
        float w = p[h][j];
        float *oh = part.o + h * part.oStride;
#pragma omp simd
        for (int64_t i = 0; i < a.dv; ++i)
          oh[i] += w * vj[i];
      }
    }
  }
}

void attendRangeGeneric(const PagedArgs &a, int64_t row, int64_t b, int64_t kvh,
                        int64_t h0, int64_t nh, int64_t begin, int64_t end,
                        Partial &part) {
  attendRangeImpl(a, row, b, kvh, h0, nh, begin, end, part);
}

__attribute__((target("avx2,fma"))) void
attendRangeAvx2(const PagedArgs &a, int64_t row, int64_t b, int64_t kvh,
                int64_t h0, int64_t nh, int64_t begin, int64_t end,
                Partial &part) {
  attendRangeImpl(a, row, b, kvh, h0, nh, begin, end, part);
}

/// Attends the rows of tile work item `it` to their keys.
template <class V>
[[gnu::always_inline]] inline void
attendTileImpl(const PagedArgs &a, float *out, const tiled::Tiling::Item &it) {
  tiled::Tile t = tiled::makeTile(it, a.q, out, a.positions, a.kvLengths, a.seq,
                                  a.heads, a.dk, a.dv);
  const int32_t *table = a.tables.ids + it.b * a.tables.stride;
  int64_t bt = a.tables.blockTokens;
  const float *kBase = a.k.data + a.k.offset + it.kvh * a.k.headStride;
  const float *vBase = a.v.data + a.v.offset + it.kvh * a.v.headStride;
  tiled::attendTile<V>(
      t, a.dk, a.dv, a.scale,
      [&](int64_t j0, int64_t nb, const float **kRows, const float **vRows) {
        for (int64_t j = 0; j < nb; ++j) {
          int64_t pos = j0 + j;
          int64_t tokenRow = table[pos / bt] * bt + pos % bt;
          kRows[j] = kBase + tokenRow * a.k.rowStride;
          vRows[j] = vBase + tokenRow * a.v.rowStride;
        }
      });
}

void attendTileGeneric(const PagedArgs &a, float *out,
                       const tiled::Tiling::Item &it) {
  attendTileImpl<tiled::VecPortable>(a, out, it);
}

// flatten: see attendAvx2 in Attention.cpp.
__attribute__((target("avx2,fma"), flatten)) void
attendTileAvx2(const PagedArgs &a, float *out, const tiled::Tiling::Item &it) {
  attendTileImpl<tiled::VecAvx2>(a, out, it);
}

/// Keys query `row` of sequence b attends to.
int64_t keyCount(const PagedArgs &a, int64_t row, int64_t b) {
  int32_t pos = a.positions[row];
  return pos < 0 ? 0 : std::min<int64_t>(pos + 1, a.kvLengths[b]);
}

} // namespace

int64_t attentionPagedScratch(int64_t queries, int64_t heads, int64_t dv) {
  // A call splits only while its work items (at least one per query row)
  // are fewer than the threads, into at most ceil(threads / items) ranges,
  // and needs queries * splits * heads * (dv + 2) floats: queries * splits <
  // queries + threads, for queries < threads.
  int64_t threads = omp_get_max_threads();
  if (threads <= 1)
    return 0;
  return (std::min(queries, threads) + threads) * heads * (dv + 2);
}

void attentionPaged(const float *q, PagedView k, PagedView v,
                    BlockTables tables, const int32_t *positions,
                    const int32_t *kvLengths, int64_t batch, int64_t seq,
                    int64_t heads, int64_t kvHeads, int64_t dk, int64_t dv,
                    float scale, float *out, float *scratch,
                    int64_t scratchFloats) {
  PagedArgs args{q,   k,     v,       tables, positions, kvLengths,
                 seq, heads, kvHeads, dk,     dv,        scale};
  int64_t group = heads / kvHeads;
  int64_t chunks = (group + kHeadChunk - 1) / kHeadChunk;
  int64_t queries = batch * seq;
  int64_t items = queries * kvHeads * chunks;
  if (items == 0)
    return;
  int64_t maxKeys = 0;
  for (int64_t b = 0; b < batch; ++b)
    maxKeys = std::max<int64_t>(maxKeys, kvLengths[b]);
  int64_t threads = omp_get_max_threads();
  int64_t perSplit = queries * heads * (dv + 2);
  int64_t splits = 1;
  if (items < threads)
    splits = std::min({(threads + items - 1) / items, kMaxAttentionSplits,
                       maxKeys / kMinSplitKeys, scratchFloats / perSplit});
  splits = std::max<int64_t>(splits, 1);
  bool avx2 = vectorKernelsActive();

  // Prefill tiles several positions; a few queries over a long context
  // (split above) attend per row like decode.
  if (splits == 1 && seq > 1) {
    tiled::Tiling tiling(batch, seq, heads, kvHeads);
    auto attendTile = avx2 ? attendTileAvx2 : attendTileGeneric;
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < tiling.items; ++i)
      attendTile(args, out, tiling.item(i));
    return;
  }

  auto attendRange = avx2 ? attendRangeAvx2 : attendRangeGeneric;

  if (splits == 1) {
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      int64_t c = item % chunks, rest = item / chunks;
      int64_t kvh = rest % kvHeads, row = rest / kvHeads;
      int64_t h0 = kvh * group + c * kHeadChunk;
      int64_t nh = std::min(kHeadChunk, group - c * kHeadChunk);
      int64_t b = row / seq;
      Partial part{out + (row * heads + h0) * dv, dv, {}, {}};
      attendRange(args, row, b, kvh, h0, nh, 0, keyCount(args, row, b), part);
      for (int64_t h = 0; h < nh; ++h) {
        if (part.l[h] == 0.0f)
          continue; // no keys: the output stays zero
        float inv = 1.0f / part.l[h];
        float *oh = part.o + h * dv;
#pragma omp simd
        for (int64_t i = 0; i < dv; ++i)
          oh[i] *= inv;
      }
    }
    return;
  }

  // Split s of query row r keeps its partial output of head h at
  // scratch[((r * splits + s) * heads + h) * dv] and (m, l) at
  // stats[2 * ((r * splits + s) * heads + h)].
  float *stats = scratch + queries * splits * heads * dv;
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < items * splits; ++unit) {
      int64_t split = unit % splits, item = unit / splits;
      int64_t c = item % chunks, rest = item / chunks;
      int64_t kvh = rest % kvHeads, row = rest / kvHeads;
      int64_t h0 = kvh * group + c * kHeadChunk;
      int64_t nh = std::min(kHeadChunk, group - c * kHeadChunk);
      int64_t b = row / seq;
      // Ranges are whole softmax blocks so that splits add no extra
      // partial blocks.
      int64_t n = keyCount(args, row, b);
      int64_t blocks = (n + kKeyBlock - 1) / kKeyBlock;
      int64_t span = (blocks + splits - 1) / splits * kKeyBlock;
      int64_t begin = std::min(n, split * span);
      int64_t end = std::min(n, begin + span);
      int64_t base = (row * splits + split) * heads + h0;
      Partial part{scratch + base * dv, dv, {}, {}};
      attendRange(args, row, b, kvh, h0, nh, begin, end, part);
      for (int64_t h = 0; h < nh; ++h) {
        stats[2 * (base + h)] = part.m[h];
        stats[2 * (base + h) + 1] = part.l[h];
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
