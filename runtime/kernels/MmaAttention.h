// Attention on the tensor cores (mma.sync, WarpMma.h) for f32 keys and
// values of up to 256 / 128 dimensions: a prefill's naive or GQA attention
// (DeepSeek's heads from the latent: dk 192, dv 128; Llama / Qwen: 128).
// Same parameters, grid, tasks, splits and merge as kiln_attention
// (KvAttention.h): a block takes up to 16 query vectors of one kv head (16
// consecutive rows where a kv head has one query head) and the keys of its
// split; here they are the 16 rows of the mma's A operand.
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

namespace kiln {

/// The largest dk / dv the tensor-core attention takes (multiples of 8).
constexpr int kMmaAttentionMaxDk = 256;
constexpr int kMmaAttentionMaxDv = 128;
constexpr int kMmaAttentionWarps = KILN_BLOCK_THREADS / 32;

KILN_HOST_FN bool mmaAttentionFits(int64_t dk, int64_t dv) {
  return dk % 8 == 0 && dk <= kMmaAttentionMaxDk && dv % 8 == 0 &&
         dv <= kMmaAttentionMaxDv;
}

/// Two floats of a row, rounded to a bf16 pair.
KILN_FN uint32_t loadBf16Pair(const float *row, int64_t c) {
#if defined(__CUDACC__)
  float2 v = *reinterpret_cast<const float2 *>(row + c);
  return packBf16x2(v.x, v.y);
#else
  return packBf16x2(row[c], row[c + 1]);
#endif
}

/// The block's shared state: each warp's per-vector max and sum and its
/// output, merged at the end.
struct MmaAttentionShared {
  float max[kMmaAttentionWarps][16], sum[kMmaAttentionWarps][16];
  float out[kMmaAttentionWarps][16][kMmaAttentionMaxDv];
  int64_t keyEnds[16];
};

KILN_FN void mmaAttend(Dim3 block, const AttentionParams &p,
                       const AttentionTask &t, MmaAttentionShared &shared) {
  constexpr int kSteps = kMmaAttentionMaxDk / 16,
                kTiles = kMmaAttentionMaxDv / 8;
  int64_t vectors = t.rows * t.nh;
  for (int v = KILN_THREAD; v < 16; v += KILN_THREADS)
    shared.keyEnds[v] =
        v < vectors ? attentionKeyEnd(p, t.row + v / t.nh, t.b) : 0;
  KILN_SYNC();
  // A dk of 8 more than a multiple of 16 leaves the last step's upper half
  // zero.
  int steps = static_cast<int>((p.dk + 15) / 16),
      tiles = static_cast<int>(p.dv / 8);

  // Q as A fragments: vector g and g + 8 of the lane's group, columns 2t,
  // 2t + 1 (+ 8) of each 16.
  Lanes<MmaA> q[kSteps];
  KILN_FOR_EACH_LANE(lane) {
    int g = lane / 4, tq = lane % 4;
    const float *rows[2] = {nullptr, nullptr};
    for (int half = 0; half < 2; ++half) {
      int v = g + 8 * half;
      if (v < vectors)
        rows[half] =
            p.q + ((t.row + v / t.nh) * p.heads + t.h0 + v % t.nh) * p.dk;
    }
    KILN_UNROLL
    for (int s = 0; s < kSteps; ++s) {
      if (s >= steps)
        break;
      for (int i = 0; i < 4; ++i) {
        const float *row = rows[i % 2];
        int64_t c = 16 * s + 2 * tq + 8 * (i / 2);
        q[s][lane].r[i] = row && c < p.dk ? loadBf16Pair(row, c) : 0u;
      }
    }
  }

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

  for (int64_t j0 = t.begin + 16 * KILN_WARP; j0 < t.end;
       j0 += 16 * KILN_WARPS) {
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
    Lanes<const float *> keys[2];
    KILN_FOR_EACH_LANE(lane) {
      int g = lane / 4;
      for (int h = 0; h < 2; ++h) {
        int64_t j = j0 + 8 * h + g < t.end ? j0 + 8 * h + g : t.end - 1;
        keys[h][lane] = F32Kv::key(p, kvRow(p.tables, t.b, j), t.kvHead);
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
          const float *key = keys[h][lane];
          int64_t c = 16 * st + 2 * tq;
          k[h][lane] = MmaB{{loadBf16Pair(key, c),
                             c + 8 < p.dk ? loadBf16Pair(key, c + 8) : 0u}};
        }
      }
      mmaBf16(s[0], q[st], k[0]);
      mmaBf16(s[1], q[st], k[1]);
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
          if (j < shared.keyEnds[g + 8 * r] && j < t.end) {
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
    const float *values[4];
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
        values[i] = F32Kv::value(
            p, kvRow(p.tables, t.b, j < t.end ? j : t.end - 1), t.kvHead);
      }
      KILN_UNROLL
      for (int f = 0; f < kTiles; ++f) {
        if (f >= tiles)
          break;
        int64_t c = 8 * f + g;
        v[f][lane] = MmaB{{packBf16x2(values[0][c], values[1][c]),
                           packBf16x2(values[2][c], values[3][c])}};
      }
    }
    KILN_UNROLL
    for (int f = 0; f < kTiles; ++f) {
      if (f >= tiles)
        break;
      mmaBf16(out[f], probs, v[f]);
    }
  }

  // Each warp's state to shared memory (lane t == 0 of a group holds its
  // rows' max and sum, as every lane of it does).
  KILN_FOR_EACH_LANE(lane) {
    int g = lane / 4, tq = lane % 4;
    if (tq == 0)
      for (int r = 0; r < 2; ++r) {
        shared.max[KILN_WARP][g + 8 * r] = runMax[r][lane];
        shared.sum[KILN_WARP][g + 8 * r] = runSum[r][lane];
      }
    KILN_UNROLL
    for (int f = 0; f < kTiles; ++f) {
      if (f >= tiles)
        break;
      for (int i = 0; i < 4; ++i)
        shared.out[KILN_WARP][g + 8 * (i / 2)][8 * f + 2 * tq + i % 2] =
            out[f][lane].r[i];
    }
  }
  KILN_SYNC();
  for (int64_t i = KILN_THREAD; i < vectors * p.dv; i += KILN_THREADS) {
    int v = static_cast<int>(i / p.dv);
    int64_t c = i % p.dv;
    float m = -3.402823466e38f;
    for (int w = 0; w < KILN_WARPS; ++w)
      if (shared.sum[w][v] > 0.0f)
        m = fmaxf(m, shared.max[w][v]);
    float sum = 0.0f, value = 0.0f;
    for (int w = 0; w < KILN_WARPS; ++w)
      if (shared.sum[w][v] > 0.0f) {
        float weight = expf(shared.max[w][v] - m);
        sum += weight * shared.sum[w][v];
        value += weight * shared.out[w][v][c];
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

/// Grid attentionGrid(batch, seq, heads, kvHeads, splits), as kiln_attention
/// (mmaAttentionFits(dk, dv), f32 keys and values).
KILN_FN void kiln_attention_mma_block(Dim3 block, const AttentionParams &p) {
  KILN_SHARED MmaAttentionShared shared;
  mmaAttend(block, p, attentionTask(block, p), shared);
}
KILN_KERNEL(kiln_attention_mma, AttentionParams)

} // namespace kiln

#endif // KILN_KERNELS_MMA_ATTENTION_H
