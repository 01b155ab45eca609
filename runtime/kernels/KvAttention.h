// The CUDA executor's KV-cache kernels: append (f32 and FP8 latent rows),
// gather, and attention over paged or contiguous keys and values with the
// context split across blocks (FlashDecoding) and merged. Semantics of
// runtime/src/cpu (kvAppendPaged, kvAppendPagedFp8, attention,
// attentionPaged, attentionPagedFp8, the KvGather launch); the host builds
// are tested against them in tests/runtime/DeviceAttentionTest.cpp.
//
// Attention: one block per (query row, head, split). The block's threads
// take a tile of keys at once, one key each (the dot product over dk from
// the query in shared memory), then share the tile's probabilities and
// stride over the dv output columns, keeping the online-softmax state
// (running max, sum, unnormalized output) as the CPU kernels do.
#ifndef KILN_KERNELS_KVATTENTION_H
#define KILN_KERNELS_KVATTENTION_H

#include "Fp8.h"
#include "FusedPrelude.h"

namespace kiln {

/// Largest dk / dv the device attention takes (MLA's latent: 576 / 512).
constexpr int kDeviceMaxHeadDim = 576;
constexpr int kDeviceMaxValueDim = 512;
/// Most context splits per query row.
constexpr int kMaxDeviceAttentionSplits = 64;
/// Values per FP8 scale group (cpu::Fp8LatentLayout::kGroup).
constexpr int kFp8CacheGroup = 128;

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

/// An FP8 latent row layout (cpu::Fp8LatentLayout); quantColumns == 0 for
/// f32 rows.
struct Fp8Rows {
  int64_t quantColumns, bf16Columns;
};
KILN_FN int64_t fp8ScaleOffset(Fp8Rows l) {
  return (l.quantColumns + 3) / 4 * 4;
}
KILN_FN int64_t fp8Bf16Offset(Fp8Rows l) {
  return fp8ScaleOffset(l) +
         4 * ((l.quantColumns + kFp8CacheGroup - 1) / kFp8CacheGroup);
}
KILN_FN int64_t fp8RowBytes(Fp8Rows l) {
  return (fp8Bf16Offset(l) + 2 * l.bf16Columns + 3) / 4 * 4;
}
/// Column c of an FP8 row, dequantized as the CPU kernels do.
KILN_FN float fp8Column(const unsigned char *row, Fp8Rows l, int64_t c) {
  if (c < l.quantColumns) {
    const float *scales =
        reinterpret_cast<const float *>(row + fp8ScaleOffset(l));
    return decodeE4m3(row[c]) * scales[c / kFp8CacheGroup];
  }
  const uint16_t *tail =
      reinterpret_cast<const uint16_t *>(row + fp8Bf16Offset(l));
  return toFloat(Bf16{tail[c - l.quantColumns]});
}

// -- Append: x[b, s, :] into position positions[b, s] of sequence b.

struct KvAppendParams {
  const float *x;
  const int32_t *positions;
  void *slot;
  KvTables tables;
  int64_t seq, entry; // entry: floats per token (f32 slots)
  Fp8Rows fp8;        // FP8 slots: the row layout
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

/// Quantizes as cpu::kvAppendPagedFp8 (byte for byte, padding zeroed).
KILN_FN void kiln_kv_append_fp8_block(Dim3 block, const KvAppendParams &p) {
  int32_t position = p.positions[block.x];
  if (position < 0)
    return;
  Fp8Rows l = p.fp8;
  int64_t columns = l.quantColumns + l.bf16Columns;
  const float *x = p.x + int64_t{block.x} * columns;
  unsigned char *row =
      static_cast<unsigned char *>(p.slot) +
      kvRow(p.tables, block.x / p.seq, position) * fp8RowBytes(l);
  float *scales = reinterpret_cast<float *>(row + fp8ScaleOffset(l));
  for (int64_t g0 = 0; g0 < l.quantColumns; g0 += kFp8CacheGroup) {
    int64_t g1 = g0 + kFp8CacheGroup < l.quantColumns ? g0 + kFp8CacheGroup
                                                      : l.quantColumns;
    float amax = 0.0f;
    for (int64_t c = g0 + KILN_THREAD; c < g1; c += KILN_THREADS)
      amax = fmaxf(amax, fabsf(x[c]));
    amax = blockMax(amax);
    float s = (amax > 1e-4f ? amax : 1e-4f) / 448.0f;
    for (int64_t c = g0 + KILN_THREAD; c < g1; c += KILN_THREADS)
      row[c] = encodeE4m3(x[c] / s);
    if (KILN_THREAD == 0)
      scales[g0 / kFp8CacheGroup] = s;
  }
  uint16_t *tail = reinterpret_cast<uint16_t *>(row + fp8Bf16Offset(l));
  for (int64_t c = KILN_THREAD; c < l.bf16Columns; c += KILN_THREADS)
    tail[c] = encodeBf16(x[l.quantColumns + c]);
  for (int64_t c = l.quantColumns + KILN_THREAD; c < fp8ScaleOffset(l);
       c += KILN_THREADS)
    row[c] = 0;
  int64_t used = fp8Bf16Offset(l) + 2 * l.bf16Columns;
  for (int64_t c = used + KILN_THREAD; c < fp8RowBytes(l); c += KILN_THREADS)
    row[c] = 0;
}
KILN_KERNEL(kiln_kv_append_fp8, KvAppendParams)

// -- Gather: columns [column, column + n) of every row of each token into
// out [batch, kvLen, rowsPerToken, n]; tokens a sequence's blocks do not
// hold read as zeros. One block per (sequence, token).

struct KvGatherParams {
  const void *slot;
  KvTables tables;
  const int32_t *held; // [batch] positions the blocks cover
  float *out;
  int64_t kvLen, rowsPerToken, width, column, n, entry;
  Fp8Rows fp8; // FP8 slots (one row per token)
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
  if (p.fp8.quantColumns > 0) {
    const unsigned char *bytes =
        static_cast<const unsigned char *>(p.slot) + row * fp8RowBytes(p.fp8);
    for (int64_t i = KILN_THREAD; i < p.n; i += KILN_THREADS)
      out[i] = fp8Column(bytes, p.fp8, p.column + i);
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
  const unsigned char *fp8Slot; // FP8 latent keys/values (k, v unused)
  Fp8Rows fp8;
  const int32_t *positions; // [rows]
  const int32_t *kvLengths; // [batch]
  float *out;               // [rows, heads, dv]
  float *scratch;           // splits > 1: [rows, heads, splits, 2 + dv]
  int64_t seq, heads, kvHeads, dk, dv;
  int64_t splitTokens; // keys per split, a multiple of 64
  int splits;
  float scale;
};

KILN_FN float attentionKey(const AttentionParams &p, const float *q,
                           int64_t row, int64_t kvHead) {
  float dot = 0.0f;
  if (p.fp8Slot) {
    const unsigned char *bytes = p.fp8Slot + row * fp8RowBytes(p.fp8);
    for (int64_t c = 0; c < p.dk; ++c)
      dot += q[c] * fp8Column(bytes, p.fp8, c);
    return dot;
  }
  const float *key =
      p.k.data + row * p.k.rowStride + p.k.offset + kvHead * p.k.headStride;
  for (int64_t c = 0; c < p.dk; ++c)
    dot += q[c] * key[c];
  return dot;
}

KILN_FN float attentionValue(const AttentionParams &p, int64_t row,
                             int64_t kvHead, int64_t c) {
  if (p.fp8Slot)
    return fp8Column(p.fp8Slot + row * fp8RowBytes(p.fp8), p.fp8, c);
  return p.v
      .data[row * p.v.rowStride + p.v.offset + kvHead * p.v.headStride + c];
}

/// Columns of dv one thread keeps: dv <= KILN_THREADS * kValuesPerThread.
#if defined(__CUDACC__)
constexpr int kValuesPerThread =
    (kDeviceMaxValueDim + KILN_BLOCK_THREADS - 1) / KILN_BLOCK_THREADS;
constexpr int kKeyTile = KILN_BLOCK_THREADS;
#else
constexpr int kValuesPerThread = kDeviceMaxValueDim;
constexpr int kKeyTile = 1;
#endif

KILN_FN void kiln_attention_block(Dim3 block, const AttentionParams &p) {
  int64_t query = block.x, head = block.y, split = block.z;
  int64_t b = query / p.seq;
  int64_t kvHead = head / (p.heads / p.kvHeads);
  int32_t position = p.positions[query];
  int64_t end = position + 1 < p.kvLengths[b] ? position + 1 : p.kvLengths[b];
  int64_t begin = split * p.splitTokens;
  if (begin + p.splitTokens < end)
    end = begin + p.splitTokens;
  if (position < 0 || end < begin)
    end = begin; // nothing to attend to: zeros

  KILN_SHARED float qs[kDeviceMaxHeadDim];
  KILN_SHARED float probs[kKeyTile];
  const float *q = p.q + (query * p.heads + head) * p.dk;
  for (int64_t c = KILN_THREAD; c < p.dk; c += KILN_THREADS)
    qs[c] = q[c];
  KILN_SYNC();

  float runningMax = -3.402823466e38f, sum = 0.0f;
  float acc[kValuesPerThread];
  for (int i = 0; i < kValuesPerThread; ++i)
    acc[i] = 0.0f;
  for (int64_t tile = begin; tile < end; tile += KILN_THREADS) {
    int64_t j = tile + KILN_THREAD;
    bool valid = j < end;
    float score =
        valid ? attentionKey(p, qs, kvRow(p.tables, b, j), kvHead) * p.scale
              : -3.402823466e38f;
    float tileMax = blockMax(score);
    float newMax = tileMax > runningMax ? tileMax : runningMax;
    float prob = valid ? expf(score - newMax) : 0.0f;
    probs[KILN_THREAD] = prob;
    float correction = expf(runningMax - newMax);
    sum = sum * correction + blockSum(prob); // blockSum syncs: probs is ready
    int64_t keys = end - tile < KILN_THREADS ? end - tile : KILN_THREADS;
    for (int i = 0; i < kValuesPerThread; ++i) {
      int64_t c = KILN_THREAD + int64_t{i} * KILN_THREADS;
      if (c >= p.dv)
        break;
      float value = acc[i] * correction;
      for (int64_t t = 0; t < keys; ++t)
        value += probs[t] *
                 attentionValue(p, kvRow(p.tables, b, tile + t), kvHead, c);
      acc[i] = value;
    }
    runningMax = newMax;
    KILN_SYNC(); // probs is rewritten by the next tile
  }

  int64_t item = query * p.heads + head;
  if (p.splits == 1) {
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int i = 0; i < kValuesPerThread; ++i) {
      int64_t c = KILN_THREAD + int64_t{i} * KILN_THREADS;
      if (c < p.dv)
        p.out[item * p.dv + c] = acc[i] * inv;
    }
    return;
  }
  float *partial = p.scratch + (item * p.splits + split) * (2 + p.dv);
  if (KILN_THREAD == 0) {
    partial[0] = sum > 0.0f ? runningMax : -3.402823466e38f;
    partial[1] = sum;
  }
  for (int i = 0; i < kValuesPerThread; ++i) {
    int64_t c = KILN_THREAD + int64_t{i} * KILN_THREADS;
    if (c < p.dv)
      partial[2 + c] = acc[i];
  }
}
KILN_KERNEL(kiln_attention, AttentionParams)

/// Merges the splits of one (query row, head): grid {rows, heads, 1}.
KILN_FN void kiln_attention_merge_block(Dim3 block, const AttentionParams &p) {
  int64_t item = int64_t{block.x} * p.heads + block.y;
  const float *partial = p.scratch + item * p.splits * (2 + p.dv);
  float globalMax = -3.402823466e38f;
  for (int s = 0; s < p.splits; ++s) {
    float m = partial[s * (2 + p.dv)];
    globalMax = m > globalMax ? m : globalMax;
  }
  float sum = 0.0f;
  for (int s = 0; s < p.splits; ++s) {
    const float *ps = partial + s * (2 + p.dv);
    if (ps[1] > 0.0f)
      sum += ps[1] * expf(ps[0] - globalMax);
  }
  float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int64_t c = KILN_THREAD; c < p.dv; c += KILN_THREADS) {
    float value = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
      const float *ps = partial + s * (2 + p.dv);
      if (ps[1] > 0.0f)
        value += ps[2 + c] * expf(ps[0] - globalMax);
    }
    p.out[item * p.dv + c] = value * inv;
  }
}
KILN_KERNEL(kiln_attention_merge, AttentionParams)

/// Splits for rows x heads blocks over contexts up to maxKv: enough blocks
/// to fill the GPU (about two per multiprocessor), splits of whole 64-key
/// blocks, at most kMaxDeviceAttentionSplits.
inline int attentionSplits(int64_t maxKv, int64_t rowsTimesHeads,
                           int multiprocessors) {
  int64_t want = (2 * multiprocessors + rowsTimesHeads - 1) / rowsTimesHeads;
  int64_t most = (maxKv + 255) / 256; // at least 256 keys per split
  int64_t splits = want < most ? want : most;
  splits = splits < 1 ? 1 : splits;
  return static_cast<int>(
      splits < kMaxDeviceAttentionSplits ? splits : kMaxDeviceAttentionSplits);
}
inline int64_t attentionSplitTokens(int64_t maxKv, int splits) {
  int64_t per = (maxKv + splits - 1) / splits;
  return (per + 63) / 64 * 64;
}
/// Scratch floats for `rows` query rows of `heads` heads with up to
/// kMaxDeviceAttentionSplits splits.
inline int64_t attentionScratchFloats(int64_t rows, int64_t heads, int64_t dv) {
  return rows * heads * kMaxDeviceAttentionSplits * (2 + dv);
}

} // namespace kiln

#endif // KILN_KERNELS_KVATTENTION_H
