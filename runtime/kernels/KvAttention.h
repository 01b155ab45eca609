// The CUDA executor's KV-cache kernels: append (f32 and packed latent rows),
// gather, and attention over paged or contiguous keys and values with the
// context split across blocks (FlashDecoding) and merged. Semantics of
// runtime/src/cpu (kvAppendPaged, kvAppendPagedPacked, attention,
// attentionPaged, attentionPagedPacked, the KvGather launch); the host builds
// are tested against them in tests/runtime/KvAttentionKernelTest.cpp.
//
// Attention: one block per (query tile, kv head, split) takes up to 16
// query vectors that share that kv head's keys: the heads of one query row
// (absorbed MLA: all 16 heads share the one latent row) or, where a kv head
// has fewer query heads, consecutive query rows of one sequence (a prefill
// of one head per kv head: 16 rows), so that each key and value row is read
// once for all of them (see attendHeads), each vector with its own causal
// end, keeping the online-softmax state (running max, sum, unnormalized
// output) as the CPU kernels do; the queries are in shared memory (16 x 576
// floats).
#ifndef KILN_KERNELS_KVATTENTION_H
#define KILN_KERNELS_KVATTENTION_H

#include "FusedPrelude.h"

KILN_KERNELS_BEGIN

/// Largest dk / dv the device attention takes (MLA's latent: 576 / 512).
constexpr int kDeviceMaxHeadDim = 576;
constexpr int kDeviceMaxValueDim = 512;
/// Most context splits per query row.
constexpr int kMaxDeviceAttentionSplits = 128;

/// Rows of keys or values: paged (through block tables) or contiguous per
/// sequence. Element c of kv head g of token j of sequence b is at data +
/// row(b, j) * rowStride + offset + g * headStride, where row(b, j) is the
/// paged row `tables[b * tableStride + j / blockTokens] * blockTokens + j %
/// blockTokens`, or `b * batchRows + j` when `tables` is null.
struct KvRows {
  const float *data;
  int64_t rowStride, headStride, offset;
};

struct KvTables {
  const int32_t *ids; // null: contiguous rows
  int64_t stride, blockTokens, batchRows;
};

KILN_FN int64_t kvRow(const KvTables &t, int64_t b, int64_t j) {
  if (!t.ids)
    return b * t.batchRows + j;
  return int64_t{t.ids[b * t.stride + j / t.blockTokens]} * t.blockTokens +
         j % t.blockTokens;
}

/// Column c of an FP8 row, dequantized as the CPU kernels do.
KILN_FN float packedColumn(const unsigned char *row, PackedRows l, int64_t c) {
  if (c < l.quantColumns) {
    const float *scales =
        reinterpret_cast<const float *>(row + packedScaleOffset(l));
    return decodeE4m3(row[c]) * scales[c / kFp8CacheGroup];
  }
  const uint16_t *tail =
      reinterpret_cast<const uint16_t *>(row + packedBf16Offset(l));
  return toFloat(Bf16{tail[c - l.quantColumns]});
}

// -- Append: x[b, s, :] into position positions[b, s] of sequence b.

struct KvAppendParams {
  const float *x;
  const int32_t *positions;
  void *slot;
  KvTables tables;
  int64_t seq, entry; // entry: floats per token (f32 slots)
  PackedRows packed;  // packed slots: the row layout
};

KILN_FN void kiln_kv_append_block(Dim3 block, const KvAppendParams &p) {
  int32_t position = p.positions[block.x];
  if (position < 0)
    return;
  const float *x = p.x + int64_t{block.x} * p.entry;
  float *row = static_cast<float *>(p.slot) +
               kvRow(p.tables, block.x / p.seq, position) * p.entry;
  for (int64_t i = KILN_THREAD; i < p.entry; i += KILN_THREADS)
    row[i] = x[i];
}
KILN_KERNEL(kiln_kv_append, KvAppendParams)

/// Packs as cpu::kvAppendPagedPacked (byte for byte, padding zeroed).
KILN_FN void kiln_kv_append_packed_block(Dim3 block, const KvAppendParams &p) {
  int32_t position = p.positions[block.x];
  if (position < 0)
    return;
  PackedRows l = p.packed;
  const float *x = p.x + int64_t{block.x} * (l.quantColumns + l.bf16Columns);
  storePackedRow(x, l,
                 static_cast<unsigned char *>(p.slot) +
                     kvRow(p.tables, block.x / p.seq, position) *
                         packedRowBytes(l));
}
KILN_KERNEL(kiln_kv_append_packed, KvAppendParams)

// -- Gather: columns [column, column + n) of every row of each token into
// out [batch, kvLen, rowsPerToken, n]; tokens a sequence's blocks do not
// hold read as zeros. One block per (sequence, token).

struct KvGatherParams {
  const void *slot;
  KvTables tables;
  const int32_t *held; // [batch] positions the blocks cover
  float *out;
  int64_t kvLen, rowsPerToken, width, column, n, entry;
  PackedRows packed; // packed slots (one row per token)
};

KILN_FN void kiln_kv_gather_block(Dim3 block, const KvGatherParams &p) {
  int64_t b = block.x / p.kvLen, t = block.x % p.kvLen;
  float *out = p.out + int64_t{block.x} * p.rowsPerToken * p.n;
  int64_t count = p.rowsPerToken * p.n;
  if (t >= p.held[b]) {
    for (int64_t i = KILN_THREAD; i < count; i += KILN_THREADS)
      out[i] = 0.0f;
    return;
  }
  int64_t row = kvRow(p.tables, b, t);
  if (isPacked(p.packed)) {
    const unsigned char *bytes = static_cast<const unsigned char *>(p.slot) +
                                 row * packedRowBytes(p.packed);
    for (int64_t i = KILN_THREAD; i < p.n; i += KILN_THREADS)
      out[i] = packedColumn(bytes, p.packed, p.column + i);
    return;
  }
  const float *src =
      static_cast<const float *>(p.slot) + row * p.entry + p.column;
  for (int64_t i = KILN_THREAD; i < count; i += KILN_THREADS)
    out[i] = src[(i / p.n) * p.width + i % p.n];
}
KILN_KERNEL(kiln_kv_gather, KvGatherParams)

// -- Attention.

struct AttentionParams {
  const float *q; // [rows = batch * seq, heads, dk]
  KvRows k, v;
  KvTables tables;
  const unsigned char *packedSlot; // packed latent keys/values (k, v unused)
  PackedRows packed;
  const int32_t *positions; // [rows]
  const int32_t *kvLengths; // [batch]
  float *out;               // [rows, heads, dv]
  float *scratch;           // splits > 1: [rows, heads, splits, 2 + dv]
  int64_t seq, heads, kvHeads, dk, dv;
  int64_t splitTokens; // keys per split, a multiple of kAttentionSplitKeys
  int splits;
  float scale;
  /// Nonzero: decode blocks do not ask the L2 for their cache rows before
  /// awaiting the kernels before them (prefetchAttentionBlock;
  /// KILN_PREFETCH=off).
  int noPrefetch;
};

/// Query vectors (query row x head) per block, all of one kv head (16 MLA
/// heads share the one latent row), so that each key and value row is read
/// once for all.
constexpr int kAttentionHeadsPerBlock = 16;
/// Keys per online-softmax step; splits are whole multiples of it.
constexpr int kAttentionKeyTile = 64;
/// Keys one warp scores at once (independent loads in flight).
constexpr int kAttentionKeysPerPass = 4;

/// Columns of dv one thread keeps per head.
#if KILN_SIMT
constexpr int kAttentionSlots =
    (kDeviceMaxValueDim + KILN_BLOCK_THREADS - 1) / KILN_BLOCK_THREADS;
#else
constexpr int kAttentionSlots = kDeviceMaxValueDim;
#endif

KILN_HOST_FN int64_t attentionHeadChunks(int64_t heads, int64_t kvHeads) {
  int64_t group = heads / kvHeads;
  return (group + kAttentionHeadsPerBlock - 1) / kAttentionHeadsPerBlock;
}
/// Consecutive query rows of a sequence one block takes: as many as fit
/// with a chunk of their kv head's query heads in kAttentionHeadsPerBlock
/// vectors (1 where a kv head has 9 or more query heads, or in decode).
KILN_HOST_FN int64_t attentionTileRows(int64_t seq, int64_t heads,
                                       int64_t kvHeads) {
  int64_t group = heads / kvHeads;
  int64_t chunk =
      group < kAttentionHeadsPerBlock ? group : kAttentionHeadsPerBlock;
  int64_t rows = kAttentionHeadsPerBlock / chunk;
  return rows < seq ? rows : seq;
}
/// Blocks of one split: (query tile, kv head, chunk of its query heads).
inline int64_t attentionBlocks(int64_t batch, int64_t seq, int64_t heads,
                               int64_t kvHeads) {
  int64_t tile = attentionTileRows(seq, heads, kvHeads);
  return batch * ((seq + tile - 1) / tile) * kvHeads *
         attentionHeadChunks(heads, kvHeads);
}
inline Dim3 attentionGrid(int64_t batch, int64_t seq, int64_t heads,
                          int64_t kvHeads, int splits) {
  return {static_cast<int>(attentionBlocks(batch, seq, heads, kvHeads)), splits,
          1};
}

/// Where key and value rows are: f32 (paged or contiguous) or FP8 latent
/// rows (keys all dk columns, values the first dv). at(row, c): column c.
/// `row` is the token's cache row (kvRow), looked up once per key tile.
struct F32Kv {
  using Row = const float *;
  KILN_FN static Row key(const AttentionParams &p, int64_t row, int64_t g) {
    return p.k.data + row * p.k.rowStride + p.k.offset + g * p.k.headStride;
  }
  KILN_FN static Row value(const AttentionParams &p, int64_t row, int64_t g) {
    return p.v.data + row * p.v.rowStride + p.v.offset + g * p.v.headStride;
  }
  KILN_FN static float at(const AttentionParams &, Row row, int64_t c) {
    return row[c];
  }
};
struct PackedKv {
  using Row = const unsigned char *;
  KILN_FN static Row key(const AttentionParams &p, int64_t row, int64_t) {
    return p.packedSlot + row * packedRowBytes(p.packed);
  }
  KILN_FN static Row value(const AttentionParams &p, int64_t row, int64_t g) {
    return key(p, row, g);
  }
  KILN_FN static float at(const AttentionParams &p, Row row, int64_t c) {
    return packedColumn(row, p.packed, c);
  }
};

/// One block's work: query rows [row, row + rows) (sequence b), query
/// heads [h0, h0 + nh) of kv head `kvHead` of each: vector v is row
/// row + v / nh, head h0 + v % nh; keys [begin, end), the last any of the
/// rows sees in this split.
struct AttentionTask {
  int64_t row, rows, b, kvHead, h0, nh, begin, end;
};

/// The keys query row `row` of sequence b sees: [0, keyEnd).
KILN_FN int64_t attentionKeyEnd(const AttentionParams &p, int64_t row,
                                int64_t b) {
  int32_t position = p.positions[row];
  if (position < 0)
    return 0; // padding: nothing to attend to (zeros)
  return position + 1 < p.kvLengths[b] ? position + 1 : p.kvLengths[b];
}

KILN_FN AttentionTask attentionTask(Dim3 block, const AttentionParams &p) {
  int64_t group = p.heads / p.kvHeads;
  int64_t chunks = attentionHeadChunks(p.heads, p.kvHeads);
  int64_t tileRows = attentionTileRows(p.seq, p.heads, p.kvHeads);
  int64_t tiles = (p.seq + tileRows - 1) / tileRows;
  int64_t chunk = block.x % chunks;
  int64_t tile = block.x / chunks / p.kvHeads;
  AttentionTask t;
  t.kvHead = block.x / chunks % p.kvHeads;
  t.b = tile / tiles;
  int64_t first = tile % tiles * tileRows;
  t.row = t.b * p.seq + first;
  t.rows = p.seq - first < tileRows ? p.seq - first : tileRows;
  t.h0 = t.kvHead * group + chunk * kAttentionHeadsPerBlock;
  t.nh = group - chunk * kAttentionHeadsPerBlock;
  t.nh = t.nh < kAttentionHeadsPerBlock ? t.nh : kAttentionHeadsPerBlock;
  t.end = 0;
  for (int64_t r = 0; r < t.rows; ++r) {
    int64_t end = attentionKeyEnd(p, t.row + r, t.b);
    t.end = end > t.end ? end : t.end;
  }
  t.begin = int64_t{block.y} * p.splitTokens;
  if (t.begin + p.splitTokens < t.end)
    t.end = t.begin + p.splitTokens;
  if (t.end < t.begin)
    t.end = t.begin; // nothing to attend to in this split
  return t;
}

/// The cache rows a decode block's task reads (whole rows, a page's run at
/// a time), asked of the L2 before the block awaits the kernels before it:
/// positions, lengths and block tables are the step's inputs, copied before
/// its first kernel, and the one row those kernels write (this step's) is
/// read coherently through the L2 whatever the prefetch brought. Prefill
/// blocks ask for nothing: their keys are mostly the step's own, and many
/// query tiles share them.
KILN_FN void prefetchAttentionBlock(Dim3 block, const AttentionParams &p) {
  if (p.seq != 1 || !p.tables.ids || p.noPrefetch || KILN_THREAD != 0)
    return;
  AttentionTask t = attentionTask(block, p);
  const void *slots[2] = {
      p.packedSlot ? static_cast<const void *>(p.packedSlot) : p.k.data,
      p.packedSlot || p.v.data == p.k.data ? nullptr : p.v.data};
  int64_t rowBytes[2] = {p.packedSlot ? packedRowBytes(p.packed)
                                      : p.k.rowStride * 4,
                         p.v.rowStride * 4};
  for (int64_t j = t.begin; j < t.end;) {
    int64_t pageEnd = (j / p.tables.blockTokens + 1) * p.tables.blockTokens;
    int64_t end = pageEnd < t.end ? pageEnd : t.end;
    int64_t row = kvRow(p.tables, t.b, j);
    for (int s = 0; s < 2; ++s)
      if (slots[s])
        prefetchToL2(static_cast<const unsigned char *>(slots[s]) +
                         row * rowBytes[s],
                     (end - j) * rowBytes[s]);
    j = end;
  }
}

/// The online softmax of H query vectors (rows x nh of them real; the
/// others score zero queries and are dropped) over the task's keys, in
/// tiles of kAttentionKeyTile, each vector's keys past its row's causal end
/// masked out:
/// - scores: each warp takes kAttentionKeysPerPass keys at a time, its
///   lanes stride over dk (coalesced rows) keeping partial dot products for
///   every head; warp sums finish them;
/// - softmax: a warp per vector (running max and sum, as the CPU kernels);
/// - values: the threads stride over dv, each keeping its columns of every
///   vector in registers, reading each value row once.
template <int H, class Kv>
KILN_FN void attendHeads(Dim3 block, const AttentionParams &p,
                         const AttentionTask &t, float *qs, float *probs,
                         float *stats, int64_t *tileRows, int64_t *keyEnds) {
  float *runMax = stats, *runSum = stats + H, *rescale = stats + 2 * H;
  int64_t vectors = t.rows * t.nh;
  for (int64_t i = KILN_THREAD; i < H * p.dk; i += KILN_THREADS) {
    int64_t v = i / p.dk;
    qs[i] = v < vectors
                ? p.q[((t.row + v / t.nh) * p.heads + t.h0 + v % t.nh) * p.dk +
                      i % p.dk]
                : 0.0f;
  }
  for (int h = KILN_THREAD; h < H; h += KILN_THREADS) {
    runMax[h] = -3.402823466e38f;
    runSum[h] = 0.0f;
    keyEnds[h] = h < vectors ? attentionKeyEnd(p, t.row + h / t.nh, t.b) : 0;
  }
  KILN_SYNC();

  float acc[H][kAttentionSlots];
  KILN_UNROLL
  for (int h = 0; h < H; ++h) {
    KILN_UNROLL
    for (int i = 0; i < kAttentionSlots; ++i)
      acc[h][i] = 0.0f;
  }
  for (int64_t j0 = t.begin; j0 < t.end; j0 += kAttentionKeyTile) {
    int nb = t.end - j0 < kAttentionKeyTile ? static_cast<int>(t.end - j0)
                                            : kAttentionKeyTile;
    for (int j = KILN_THREAD; j < nb; j += KILN_THREADS)
      tileRows[j] = kvRow(p.tables, t.b, j0 + j);
    KILN_SYNC();
    // Past the tile's end a warp rescores its last key and drops it.
    for (int k0 = KILN_WARP * kAttentionKeysPerPass; k0 < nb;
         k0 += KILN_WARPS * kAttentionKeysPerPass) {
      typename Kv::Row rows[kAttentionKeysPerPass];
      KILN_UNROLL
      for (int u = 0; u < kAttentionKeysPerPass; ++u)
        rows[u] = Kv::key(p, tileRows[k0 + u < nb ? k0 + u : nb - 1], t.kvHead);
      float dots[kAttentionKeysPerPass][H];
      KILN_UNROLL
      for (int u = 0; u < kAttentionKeysPerPass; ++u) {
        KILN_UNROLL
        for (int h = 0; h < H; ++h)
          dots[u][h] = 0.0f;
      }
      for (int64_t c = KILN_LANE; c < p.dk; c += KILN_WARP_SIZE) {
        float key[kAttentionKeysPerPass];
        KILN_UNROLL
        for (int u = 0; u < kAttentionKeysPerPass; ++u)
          key[u] = Kv::at(p, rows[u], c);
        KILN_UNROLL
        for (int h = 0; h < H; ++h) {
          float query = qs[h * p.dk + c];
          KILN_UNROLL
          for (int u = 0; u < kAttentionKeysPerPass; ++u)
            dots[u][h] += query * key[u];
        }
      }
      KILN_UNROLL
      for (int u = 0; u < kAttentionKeysPerPass; ++u) {
        KILN_UNROLL
        for (int h = 0; h < H; ++h) {
          float dot = warpSum(dots[u][h]);
          if (KILN_LANE == 0 && k0 + u < nb)
            probs[h * kAttentionKeyTile + k0 + u] = dot * p.scale;
        }
      }
    }
    KILN_SYNC();
    for (int h = KILN_WARP; h < H; h += KILN_WARPS) {
      float *ph = probs + h * kAttentionKeyTile;
      // Keys [0, seen) of the tile are this vector's; the rest weigh 0.
      int64_t left = keyEnds[h] - j0;
      int seen = left < nb ? (left > 0 ? static_cast<int>(left) : 0) : nb;
      float tileMax = -3.402823466e38f;
      for (int j = KILN_LANE; j < seen; j += KILN_WARP_SIZE)
        tileMax = fmaxf(tileMax, ph[j]);
      tileMax = warpMax(tileMax);
      float oldMax = runMax[h];
      float newMax = fmaxf(oldMax, tileMax);
      float sum = 0.0f;
      for (int j = KILN_LANE; j < nb; j += KILN_WARP_SIZE) {
        float e = j < seen ? expf(ph[j] - newMax) : 0.0f;
        ph[j] = e;
        sum += e;
      }
      sum = warpSum(sum);
      if (KILN_LANE == 0) {
        float r = expf(oldMax - newMax); // 0 on the first tile
        rescale[h] = r;
        runSum[h] = runSum[h] * r + sum;
        runMax[h] = newMax;
      }
    }
    KILN_SYNC();
    KILN_UNROLL
    for (int h = 0; h < H; ++h) {
      float r = rescale[h];
      KILN_UNROLL
      for (int i = 0; i < kAttentionSlots; ++i)
        acc[h][i] *= r;
    }
    KILN_UNROLL4
    for (int j = 0; j < nb; ++j) {
      typename Kv::Row row = Kv::value(p, tileRows[j], t.kvHead);
      KILN_UNROLL
      for (int i = 0; i < kAttentionSlots; ++i) {
        int64_t c = KILN_THREAD + int64_t{i} * KILN_THREADS;
        if (c < p.dv) {
          float value = Kv::at(p, row, c);
          KILN_UNROLL
          for (int h = 0; h < H; ++h)
            acc[h][i] += probs[h * kAttentionKeyTile + j] * value;
        }
      }
    }
    KILN_SYNC(); // probs, rescale and tileRows are rewritten by the next tile
  }

  KILN_UNROLL
  for (int h = 0; h < H; ++h) {
    if (h >= vectors)
      continue;
    int64_t item = (t.row + h / t.nh) * p.heads + t.h0 + h % t.nh;
    float *dst;
    float inv = 1.0f;
    if (p.splits == 1) {
      dst = p.out + item * p.dv;
      inv = runSum[h] > 0.0f ? 1.0f / runSum[h] : 0.0f;
    } else {
      float *partial = p.scratch + (item * p.splits + block.y) * (2 + p.dv);
      if (KILN_THREAD == 0) {
        partial[0] = runSum[h] > 0.0f ? runMax[h] : -3.402823466e38f;
        partial[1] = runSum[h];
      }
      dst = partial + 2;
    }
    KILN_UNROLL
    for (int i = 0; i < kAttentionSlots; ++i) {
      int64_t c = KILN_THREAD + int64_t{i} * KILN_THREADS;
      if (c < p.dv)
        dst[c] = acc[h][i] * inv;
    }
  }
}

/// Grid attentionGrid(batch, seq, heads, kvHeads, splits). The block's
/// query vectors run in the smallest of 1, 2, 4, 8, 16 that holds them.
KILN_FN void kiln_attention_block(Dim3 block, const AttentionParams &p) {
  KILN_SHARED float qs[kAttentionHeadsPerBlock * kDeviceMaxHeadDim];
  KILN_SHARED float probs[kAttentionHeadsPerBlock * kAttentionKeyTile];
  KILN_SHARED float stats[3 * kAttentionHeadsPerBlock];
  KILN_SHARED int64_t tileRows[kAttentionKeyTile];
  KILN_SHARED int64_t keyEnds[kAttentionHeadsPerBlock];
  AttentionTask t = attentionTask(block, p);
  int64_t vectors = t.rows * t.nh;
  if (p.packedSlot) {
    // FP8 latent caches are MLA's: one kv head for all the heads.
    if (vectors > 8)
      attendHeads<16, PackedKv>(block, p, t, qs, probs, stats, tileRows,
                                keyEnds);
    else
      attendHeads<8, PackedKv>(block, p, t, qs, probs, stats, tileRows,
                               keyEnds);
  } else if (vectors > 8) {
    attendHeads<16, F32Kv>(block, p, t, qs, probs, stats, tileRows, keyEnds);
  } else if (vectors > 4) {
    attendHeads<8, F32Kv>(block, p, t, qs, probs, stats, tileRows, keyEnds);
  } else if (vectors > 2) {
    attendHeads<4, F32Kv>(block, p, t, qs, probs, stats, tileRows, keyEnds);
  } else if (vectors > 1) {
    attendHeads<2, F32Kv>(block, p, t, qs, probs, stats, tileRows, keyEnds);
  } else {
    attendHeads<1, F32Kv>(block, p, t, qs, probs, stats, tileRows, keyEnds);
  }
}
KILN_KERNEL_PREFETCHING(kiln_attention, AttentionParams, prefetchAttentionBlock)

/// Value columns one merge block takes: one per thread.
constexpr int kMergeColumns = KILN_BLOCK_THREADS;

/// The merge's grid: a block per (query row, head, kMergeColumns columns),
/// so that a batch-1 step merges on heads x dv / kMergeColumns
/// multiprocessors, not one per head.
inline Dim3 attentionMergeGrid(int64_t rows, int64_t heads, int64_t dv) {
  return {static_cast<int>(rows), static_cast<int>(heads),
          static_cast<int>((dv + kMergeColumns - 1) / kMergeColumns)};
}

/// Merges the splits of one (query row, head) in a block of value columns
/// (attentionMergeGrid). The splits' weights exp(max_s - max) are computed
/// once per block, in shared memory; a column's splits are then 16 loads at
/// a time with no store between them, where one load per split waited a
/// round trip each (64 splits at batch 1 and 1K).
KILN_FN void kiln_attention_merge_block(Dim3 block, const AttentionParams &p) {
  KILN_SHARED float weights[kMaxDeviceAttentionSplits];
  int64_t item = int64_t{block.x} * p.heads + block.y;
  const float *partial = p.scratch + item * p.splits * (2 + p.dv);
  float localMax = -3.402823466e38f;
  for (int s = KILN_THREAD; s < p.splits; s += KILN_THREADS) {
    const float *ps = partial + s * (2 + p.dv);
    if (ps[1] > 0.0f)
      localMax = fmaxf(localMax, ps[0]);
  }
  float globalMax = blockMax(localMax);
  float localSum = 0.0f;
  for (int s = KILN_THREAD; s < p.splits; s += KILN_THREADS) {
    const float *ps = partial + s * (2 + p.dv);
    weights[s] = ps[1] > 0.0f ? expf(ps[0] - globalMax) : 0.0f;
    localSum += weights[s] * ps[1];
  }
  float sum = blockSum(localSum); // syncs: weights is ready
  float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  int64_t first = int64_t{block.z} * kMergeColumns;
  int64_t end = first + kMergeColumns < p.dv ? first + kMergeColumns : p.dv;
  for (int64_t c = first + KILN_THREAD; c < end; c += KILN_THREADS) {
    const float *column = partial + 2 + c;
    float value = 0.0f;
    KILN_UNROLL16
    for (int s = 0; s < p.splits; ++s)
      value += weights[s] * column[s * (2 + p.dv)];
    p.out[item * p.dv + c] = value * inv;
  }
}
KILN_KERNEL(kiln_attention_merge, AttentionParams)

/// The fewest keys a context split takes (a multiple of 16, the tensor-core
/// attention's key chunk). Less than a key tile: a short context at batch
/// 1 (16 blocks of 64 keys at 1K) spreads over 4x more multiprocessors.
constexpr int kAttentionSplitKeys = 16;

/// Splits for `blocks` (attentionBlocks) over contexts of up to maxKv keys:
/// about two blocks per multiprocessor, each split at least
/// kAttentionSplitKeys keys, at most kMaxDeviceAttentionSplits. A block holds
/// at most kAttentionHeadsPerBlock (row, head) vectors, so rows x heads x
/// splits <= kAttentionHeadsPerBlock x 4 x multiprocessors
/// (attentionScratchFloats).
inline int attentionSplits(int64_t maxKv, int64_t blocks, int multiprocessors) {
  if (blocks >= 2 * int64_t{multiprocessors})
    return 1;
  int64_t want = (2 * int64_t{multiprocessors} + blocks - 1) / blocks;
  int64_t most = (maxKv + kAttentionSplitKeys - 1) / kAttentionSplitKeys;
  int64_t splits = want < most ? want : most;
  splits = splits < 1 ? 1 : splits;
  return static_cast<int>(
      splits < kMaxDeviceAttentionSplits ? splits : kMaxDeviceAttentionSplits);
}
inline int64_t attentionSplitTokens(int64_t maxKv, int splits) {
  int64_t per = (maxKv + splits - 1) / splits;
  return (per + kAttentionSplitKeys - 1) / kAttentionSplitKeys *
         kAttentionSplitKeys;
}
/// Scratch floats of split attention on a GPU of `multiprocessors`.
inline int64_t attentionScratchFloats(int multiprocessors, int64_t dv) {
  return int64_t{kAttentionHeadsPerBlock} * 4 * multiprocessors * (2 + dv);
}

KILN_KERNELS_END

#endif // KILN_KERNELS_KVATTENTION_H
