// Attention on the tensor cores (mma.sync, WarpMma.h) for f32 keys and
// values, or a bf16 latent cache's rows, of up to 256 / 128 dimensions: a
// prefill's naive or GQA attention (DeepSeek's heads from the latent: dk 192,
// dv 128; Llama / Qwen: 128). Same parameters, grid, tasks, splits and merge as
// kiln_attention (KvAttention.h): a block takes up to 16 query vectors of one
// kv head (16 consecutive rows where a kv head has one query head) and the keys
// of its split; here they are the 16 rows of the mma's A operand.
//
// The block's 4 warps take 16-key chunks in turn, each with its own online
// softmax (FlashAttention-2 in registers): S = Q K^T as two 16 x 8 mma
// tiles per 16 dk columns, masked per vector at its causal end, the row max
// and sum across the 4 lanes of a fragment row, P (the two S tiles are
// exactly the A fragment of the next mma) times V into 16 x 8 output tiles.
// The warps' (max, sum, output) are merged through shared memory at the
// end, as the splits are by kiln_attention_merge.
//
// Numerics: Q, K, P and V are rounded to bf16, products summed in fp32, the
// softmax in fp32: bf16 resolution of kiln_attention, which the executor
// uses where activations are fp32 (KILN_MMA_ATTENTION).
#ifndef KILN_KERNELS_MMA_ATTENTION_H
#define KILN_KERNELS_MMA_ATTENTION_H

#include "KvAttention.h"
#include "WarpMma.h"

KILN_KERNELS_BEGIN

/// The largest dk / dv the tensor-core attention takes (multiples of 8).
constexpr int kMmaAttentionMaxDk = 256;
constexpr int kMmaAttentionMaxDv = 128;
constexpr int kMmaAttentionWarps = KILN_BLOCK_THREADS / 32;

KILN_HOST_FN bool mmaAttentionFits(int64_t dk, int64_t dv) {
  return dk % 8 == 0 && dk <= kMmaAttentionMaxDk && dv % 8 == 0 &&
         dv <= kMmaAttentionMaxDv;
}

/// The wide variant: absorbed MLA's latent rows (dk 576, dv 512). Each warp
/// owns a quarter of dv (at most 128 columns: its accumulators stay in
/// registers) and scores every key itself (the tensor cores have the
/// throughput; a key row read by one warp is in L1 for the others); Q is
/// kept in shared memory as fragments.
constexpr int kMmaAttentionWideMaxDk = 576;
constexpr int kMmaAttentionWideMaxDv = 512;

KILN_HOST_FN bool mmaAttentionWideFits(int64_t dk, int64_t dv) {
  return dk % 8 == 0 && dk <= kMmaAttentionWideMaxDk && dv % 32 == 0 &&
         dv <= kMmaAttentionWideMaxDv;
}

/// Two floats of a row, rounded to a bf16 pair.
KILN_FN uint32_t loadBf16Pair(const float *row, int64_t c) {
#if defined(__CUDACC__)
  float2 v = *reinterpret_cast<const float2 *>(row + c);
  return packBf16x2(v.x, v.y);
#else
  requireAlignedLoad(row + c, 8);
  return packBf16x2(row[c], row[c + 1]);
#endif
}

/// A bf16 latent slot's rows (a packed row without e4m3 columns, one per
/// token): keys are whole rows, values their first dv columns, as stored.
struct Bf16Kv {
  using Row = const uint16_t *;
  KILN_FN static Row key(const AttentionParams &p, int64_t row, int64_t) {
    return reinterpret_cast<Row>(p.packedSlot + row * packedRowBytes(p.packed));
  }
  KILN_FN static Row value(const AttentionParams &p, int64_t row, int64_t g) {
    return key(p, row, g);
  }
};

/// Columns c, c + 1 (c even) of a key row as a bf16 pair: an f32 row's
/// rounded, a bf16 row's as stored (one 4-byte load).
KILN_FN uint32_t keyPair(const float *row, int64_t c) {
  return loadBf16Pair(row, c);
}
KILN_FN uint32_t keyPair(const uint16_t *row, int64_t c) {
#if defined(__CUDACC__)
  return *reinterpret_cast<const uint32_t *>(row + c);
#else
  requireAlignedLoad(row + c, 4);
  return uint32_t{row[c]} | (uint32_t{row[c + 1]} << 16);
#endif
}

/// Column c of two value rows as a bf16 pair (the first row's low).
KILN_FN uint32_t valuePair(const float *a, const float *b, int64_t c) {
  return packBf16x2(a[c], b[c]);
}
KILN_FN uint32_t valuePair(const uint16_t *a, const uint16_t *b, int64_t c) {
  return uint32_t{a[c]} | (uint32_t{b[c]} << 16);
}

/// The block's shared state: each warp's per-vector max and sum and its
/// output, merged at the end (narrow); Q's fragments (wide).
struct MmaAttentionShared {
  float max[kMmaAttentionWarps][16], sum[kMmaAttentionWarps][16];
  float out[kMmaAttentionWarps][16][kMmaAttentionMaxDv];
  int64_t keyEnds[16];
};
struct MmaAttentionWideShared {
  MmaA q[kMmaAttentionWideMaxDk / 16][32];
  int64_t keyEnds[16];
};

/// Lane `lane`'s A fragment of Q for dk columns [16 st, 16 st + 16): vectors
/// g and g + 8 of its group, columns 2t, 2t + 1 (+ 8); zeros past dk (a dk
/// of 8 more than a multiple of 16) and for vectors past the task's.
KILN_FN MmaA queryFragment(const AttentionParams &p, const AttentionTask &t,
                           int st, int lane) {
  int g = lane / 4, tq = lane % 4;
  MmaA a;
  for (int i = 0; i < 4; ++i) {
    int v = g + 8 * (i % 2);
    int64_t c = 16 * st + 2 * tq + 8 * (i / 2);
    a.r[i] =
        v < t.rows * t.nh && c < p.dk
            ? loadBf16Pair(
                  p.q + ((t.row + v / t.nh) * p.heads + t.h0 + v % t.nh) * p.dk,
                  c)
            : 0u;
  }
  return a;
}

/// Narrow: each warp takes every 4th 16-key chunk for all of dv, merged
/// through `merge` at the end. Wide: each warp takes every chunk for its
/// quarter of dv (`part`; the host's one warp takes the 4 parts in turn).
/// Kv: F32Kv (KvAttention.h) or Bf16Kv, where the key and value rows are.
template <bool Wide, typename Kv>
KILN_FN void mmaAttend(Dim3 block, const AttentionParams &p,
                       const AttentionTask &t, int64_t *keyEnds,
                       MmaAttentionShared *merge, MmaA (*qShared)[32]) {
  constexpr int kSteps =
      (Wide ? kMmaAttentionWideMaxDk : kMmaAttentionMaxDk) / 16;
  constexpr int kTiles = kMmaAttentionMaxDv / 8; // per warp
  int64_t vectors = t.rows * t.nh;
  for (int v = KILN_THREAD; v < 16; v += KILN_THREADS)
    keyEnds[v] = v < vectors ? attentionKeyEnd(p, t.row + v / t.nh, t.b) : 0;
  int steps = static_cast<int>((p.dk + 15) / 16);
  int tiles = static_cast<int>(Wide ? p.dv / 32 : p.dv / 8);

  // Q as A fragments: in registers (narrow), or shared memory (wide: 36
  // steps would take 144 registers).
  Lanes<MmaA> q[Wide ? 1 : kSteps];
  if (Wide) {
    for (int i = KILN_THREAD; i < steps * 32; i += KILN_THREADS)
      qShared[i / 32][i % 32] = queryFragment(p, t, i / 32, i % 32);
  } else {
    KILN_FOR_EACH_LANE(lane) {
      KILN_UNROLL
      for (int st = 0; st < kSteps; ++st) {
        if (st >= steps)
          break;
        q[st][lane] = queryFragment(p, t, st, lane);
      }
    }
  }
  KILN_SYNC();

  for (int part = Wide ? KILN_WARP : 0; part < (Wide ? kMmaAttentionWarps : 1);
       part += Wide ? KILN_WARPS : 1) {
    int64_t col0 = Wide ? part * (p.dv / kMmaAttentionWarps) : 0;
    Lanes<MmaC> out[kTiles];
    Lanes<float> runMax[2], runSum[2];
    KILN_FOR_EACH_LANE(lane) {
      for (int f = 0; f < kTiles; ++f)
        for (int i = 0; i < 4; ++i)
          out[f][lane].r[i] = 0.0f;
      for (int h = 0; h < 2; ++h) {
        runMax[h][lane] = -3.402823466e38f;
        runSum[h][lane] = 0.0f;
      }
    }

    for (int64_t j0 = t.begin + (Wide ? 0 : 16 * KILN_WARP); j0 < t.end;
         j0 += Wide ? 16 : 16 * KILN_WARPS) {
      // S = Q K^T for keys j0 + [0, 8) and j0 + [8, 16): key g of each, its
      // columns 2t, 2t + 1 (+ 8). Keys past the task's end read its last key
      // and are masked below.
      Lanes<MmaC> s[2];
      KILN_FOR_EACH_LANE(lane) {
        for (int h = 0; h < 2; ++h)
          for (int i = 0; i < 4; ++i)
            s[h][lane].r[i] = 0.0f;
      }
      // The lane's two key rows, looked up once per chunk.
      Lanes<typename Kv::Row> keys[2];
      KILN_FOR_EACH_LANE(lane) {
        int g = lane / 4;
        for (int h = 0; h < 2; ++h) {
          int64_t j = j0 + 8 * h + g < t.end ? j0 + 8 * h + g : t.end - 1;
          keys[h][lane] = Kv::key(p, kvRow(p.tables, t.b, j), t.kvHead);
        }
      }
      KILN_UNROLL
      for (int st = 0; st < kSteps; ++st) {
        if (st >= steps)
          break;
        Lanes<MmaB> k[2];
        KILN_FOR_EACH_LANE(lane) {
          int tq = lane % 4;
          for (int h = 0; h < 2; ++h) {
            typename Kv::Row key = keys[h][lane];
            int64_t c = 16 * st + 2 * tq;
            k[h][lane] = MmaB{
                {keyPair(key, c), c + 8 < p.dk ? keyPair(key, c + 8) : 0u}};
          }
        }
        if (Wide) {
          Lanes<MmaA> a;
          KILN_FOR_EACH_LANE(lane) { a[lane] = qShared[st][lane]; }
          mmaBf16(s[0], a, k[0]);
          mmaBf16(s[1], a, k[1]);
        } else {
          mmaBf16(s[0], q[st], k[0]);
          mmaBf16(s[1], q[st], k[1]);
        }
      }
      // Online softmax per vector (rows g and g + 8 of the lane's group): S
      // element i of tile h is vector g + 8 (i / 2), key j0 + 8h + 2t + i % 2.
      // Bit 4h + i of `seen`: whether the element's vector sees its key (a NaN
      // score it sees stays NaN, as in kiln_attention).
      Lanes<float> tileMax[2], scale[2];
      Lanes<uint32_t> seen;
      KILN_FOR_EACH_LANE(lane) {
        int g = lane / 4, tq = lane % 4;
        seen[lane] = 0;
        for (int r = 0; r < 2; ++r)
          tileMax[r][lane] = -3.402823466e38f;
        for (int h = 0; h < 2; ++h)
          for (int i = 0; i < 4; ++i) {
            int r = i / 2;
            int64_t j = j0 + 8 * h + 2 * tq + i % 2;
            if (j < keyEnds[g + 8 * r] && j < t.end) {
              float score = s[h][lane].r[i] * p.scale;
              s[h][lane].r[i] = score;
              seen[lane] |= 1u << (4 * h + i);
              tileMax[r][lane] = fmaxf(tileMax[r][lane], score);
            }
          }
      }
      reduceOverGroup<true>(tileMax[0]);
      reduceOverGroup<true>(tileMax[1]);
      Lanes<float> tileSum[2];
      Lanes<MmaA> probs;
      KILN_FOR_EACH_LANE(lane) {
        float newMax[2];
        for (int r = 0; r < 2; ++r) {
          newMax[r] = fmaxf(runMax[r][lane], tileMax[r][lane]);
          scale[r][lane] = expf(runMax[r][lane] - newMax[r]); // 0 at first
          runMax[r][lane] = newMax[r];
          tileSum[r][lane] = 0.0f;
        }
        float e[2][4];
        for (int h = 0; h < 2; ++h)
          for (int i = 0; i < 4; ++i) {
            int r = i / 2;
            e[h][i] = seen[lane] >> (4 * h + i) & 1u
                          ? expf(s[h][lane].r[i] - newMax[r])
                          : 0.0f;
            tileSum[r][lane] += e[h][i];
          }
        // P as the A fragment of P V: a0..a3 from tile 0, a4..a7 from tile 1.
        probs[lane] =
            MmaA{{packBf16x2(e[0][0], e[0][1]), packBf16x2(e[0][2], e[0][3]),
                  packBf16x2(e[1][0], e[1][1]), packBf16x2(e[1][2], e[1][3])}};
      }
      reduceOverGroup<false>(tileSum[0]);
      reduceOverGroup<false>(tileSum[1]);
      // O = O * scale + P V: value rows of keys 2t, 2t + 1, 2t + 8, 2t + 9,
      // column g of each 8.
      typename Kv::Row values[4];
      Lanes<MmaB> v[kTiles];
      KILN_FOR_EACH_LANE(lane) {
        int g = lane / 4, tq = lane % 4;
        for (int r = 0; r < 2; ++r)
          runSum[r][lane] = runSum[r][lane] * scale[r][lane] + tileSum[r][lane];
        for (int f = 0; f < kTiles; ++f)
          for (int i = 0; i < 4; ++i)
            out[f][lane].r[i] *= scale[i / 2][lane];
        for (int i = 0; i < 4; ++i) {
          int64_t j = j0 + 2 * tq + i % 2 + 8 * (i / 2);
          values[i] = Kv::value(
              p, kvRow(p.tables, t.b, j < t.end ? j : t.end - 1), t.kvHead);
        }
        KILN_UNROLL
        for (int f = 0; f < kTiles; ++f) {
          if (f >= tiles)
            break;
          int64_t c = col0 + 8 * f + g;
          v[f][lane] = MmaB{{valuePair(values[0], values[1], c),
                             valuePair(values[2], values[3], c)}};
        }
      }
      KILN_UNROLL
      for (int f = 0; f < kTiles; ++f) {
        if (f >= tiles)
          break;
        mmaBf16(out[f], probs, v[f]);
      }
    }

    if (Wide) {
      // Every part has the same softmax state: its columns go straight out
      // (the max and sum of a split with part 0's).
      KILN_FOR_EACH_LANE(lane) {
        int g = lane / 4, tq = lane % 4;
        for (int r = 0; r < 2; ++r) {
          int v = g + 8 * r;
          if (v >= vectors)
            continue;
          int64_t item = (t.row + v / t.nh) * p.heads + t.h0 + v % t.nh;
          float sum = runSum[r][lane];
          float *dst = p.splits == 1 ? p.out + item * p.dv
                                     : p.scratch + (item * p.splits + block.y) *
                                                       (2 + p.dv);
          if (p.splits > 1 && part == 0 && tq == 0) {
            dst[0] = sum > 0.0f ? runMax[r][lane] : -3.402823466e38f;
            dst[1] = sum;
          }
          float inv = p.splits == 1 ? (sum > 0.0f ? 1.0f / sum : 0.0f) : 1.0f;
          float *columns = p.splits == 1 ? dst : dst + 2;
          KILN_UNROLL
          for (int f = 0; f < kTiles; ++f) {
            if (f >= tiles)
              break;
            for (int i = 2 * r; i < 2 * r + 2; ++i)
              columns[col0 + 8 * f + 2 * tq + i % 2] = out[f][lane].r[i] * inv;
          }
        }
      }
    } else {
      // Each warp's state to shared memory (lane t == 0 of a group holds its
      // rows' max and sum, as every lane of it does).
      KILN_FOR_EACH_LANE(lane) {
        int g = lane / 4, tq = lane % 4;
        if (tq == 0)
          for (int r = 0; r < 2; ++r) {
            merge->max[KILN_WARP][g + 8 * r] = runMax[r][lane];
            merge->sum[KILN_WARP][g + 8 * r] = runSum[r][lane];
          }
        KILN_UNROLL
        for (int f = 0; f < kTiles; ++f) {
          if (f >= tiles)
            break;
          for (int i = 0; i < 4; ++i)
            merge->out[KILN_WARP][g + 8 * (i / 2)][8 * f + 2 * tq + i % 2] =
                out[f][lane].r[i];
        }
      }
      KILN_SYNC();
      for (int64_t i = KILN_THREAD; i < vectors * p.dv; i += KILN_THREADS) {
        int v = static_cast<int>(i / p.dv);
        int64_t c = i % p.dv;
        float m = -3.402823466e38f;
        for (int w = 0; w < KILN_WARPS; ++w)
          if (merge->sum[w][v] > 0.0f)
            m = fmaxf(m, merge->max[w][v]);
        float sum = 0.0f, value = 0.0f;
        for (int w = 0; w < KILN_WARPS; ++w)
          if (merge->sum[w][v] > 0.0f) {
            float weight = expf(merge->max[w][v] - m);
            sum += weight * merge->sum[w][v];
            value += weight * merge->out[w][v][c];
          }
        int64_t item = (t.row + v / t.nh) * p.heads + t.h0 + v % t.nh;
        if (p.splits == 1) {
          p.out[item * p.dv + c] = sum > 0.0f ? value / sum : 0.0f;
        } else {
          float *partial = p.scratch + (item * p.splits + block.y) * (2 + p.dv);
          if (c == 0) {
            partial[0] = sum > 0.0f ? m : -3.402823466e38f;
            partial[1] = sum;
          }
          partial[2 + c] = value;
        }
      }
    }
  }
}

/// Grid attentionGrid(batch, seq, heads, kvHeads, splits), as kiln_attention
/// (mmaAttentionFits(dk, dv), f32 keys and values). Each key and value
/// source is its own kernel: one kernel for both spilled (ptxas allocates
/// registers for the larger path everywhere).
KILN_FN void kiln_attention_mma_block(Dim3 block, const AttentionParams &p) {
  KILN_SHARED MmaAttentionShared shared;
  mmaAttend<false, F32Kv>(block, p, attentionTask(block, p), shared.keyEnds,
                          &shared, nullptr);
}
KILN_KERNEL_PREFETCHING(kiln_attention_mma, AttentionParams,
                        prefetchAttentionBlock)

/// The same over a bf16 latent slot's rows.
KILN_FN void kiln_attention_mma_bf16_rows_block(Dim3 block,
                                                const AttentionParams &p) {
  KILN_SHARED MmaAttentionShared shared;
  mmaAttend<false, Bf16Kv>(block, p, attentionTask(block, p), shared.keyEnds,
                           &shared, nullptr);
}
KILN_KERNEL_PREFETCHING(kiln_attention_mma_bf16_rows, AttentionParams,
                        prefetchAttentionBlock)

/// The same for mmaAttentionWideFits(dk, dv).
KILN_FN void kiln_attention_mma_wide_block(Dim3 block,
                                           const AttentionParams &p) {
  KILN_SHARED MmaAttentionWideShared shared;
  mmaAttend<true, F32Kv>(block, p, attentionTask(block, p), shared.keyEnds,
                         nullptr, shared.q);
}
KILN_KERNEL_PREFETCHING(kiln_attention_mma_wide, AttentionParams,
                        prefetchAttentionBlock)

/// The wide variant over a bf16 latent slot's rows.
KILN_FN void kiln_attention_mma_wide_bf16_rows_block(Dim3 block,
                                                     const AttentionParams &p) {
  KILN_SHARED MmaAttentionWideShared shared;
  mmaAttend<true, Bf16Kv>(block, p, attentionTask(block, p), shared.keyEnds,
                          nullptr, shared.q);
}
KILN_KERNEL_PREFETCHING(kiln_attention_mma_wide_bf16_rows, AttentionParams,
                        prefetchAttentionBlock)

KILN_KERNELS_END

#endif // KILN_KERNELS_MMA_ATTENTION_H
