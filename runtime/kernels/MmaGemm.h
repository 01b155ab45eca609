// GEMMs of a few to a few dozen rows on the tensor cores (mma.sync,
// WarpMma.h): out[m, n] = x[m, :] . w[n, :] (+ bias[n]) for bf16 and
// block-scaled FP8 weights, dense, per head (grid.z) or grouped by expert
// through device-side offsets, as the GEMVs of Matmul.h take them
// (GemmParams). Decode steps of 32+ sequences give their experts and
// absorbed-MLA heads several rows each; the GEMV applies each weight to its
// rows on the CUDA cores, loading every activation once per weight row, so
// it runs out of L1 bandwidth long before HBM's. Here a block owns 16 weight
// rows (its warps split k), each activation is loaded once per 16 of them,
// and the tensor cores do the products. What remains is the activations'
// traffic from L2: per k column 32 bytes of bf16 weights against 4 bytes
// per token, so a pass of 32 tokens reads 4x the weight bytes from L2
// (not yet measured; bf16 activations or more rows per block would cut it).
//
// The weights are the mma's 16-row A operand and the tokens its 8-column B
// operand (a small-batch GEMM's usual swap), so a weight row is loaded
// straight from device memory into the fragment. The k order within 32
// columns is permuted so that each lane reads 16 contiguous bytes of two
// weight rows and 8 contiguous activations of a token: lane (g, t) takes
// columns [8t, 8t + 8) of a 32-column slab, [8t, 8t + 4) feeding the
// slab's first mma (as its logical k 2t, 2t+1, 2t+8, 2t+9) and
// [8t + 4, 8t + 8) the second. A and B use the same permutation, so the sum
// over k is unchanged.
//
// Numerics: activations are rounded to bf16 (as for cuBLASLt's bf16 GEMMs),
// products summed in fp32. FP8 weights (e4m3, exact in bf16) are multiplied
// by FP8-quantized activations (their codes, also exact in bf16) and each
// 128 columns' sum is scaled by the weight's and the token's block scales,
// which is the FP8 GEMV's arithmetic up to the order of the sums.
//
// Matrix-bound GEMMs belong to cuBLASLt (wgmma); these are memory-bound.
#ifndef KILN_KERNELS_MMA_GEMM_H
#define KILN_KERNELS_MMA_GEMM_H

#include "Matmul.h"
#include "WarpMma.h"

KILN_KERNELS_BEGIN

/// Weight rows per block (the mma's M). The block's warps split k and sum
/// their products through shared memory at the end: a block per 16 rows
/// keeps every multiprocessor busy on a few thousand output columns.
constexpr int kMmaRows = 16;
constexpr int kMmaWarps = KILN_BLOCK_THREADS / 32;
/// Columns of k per mma pair (a slab) and per step of a warp (four slabs:
/// eight 16-byte weight loads of each lane in flight, and one FP8 scale
/// block).
constexpr int kMmaSlab = 32;
constexpr int kMmaStep = 128;
/// Tokens per pass over the weights: kMmaFragments mma columns of 8.
constexpr int kMmaFragments = 4;

inline Dim3 mmaGemmGrid(int64_t n, int64_t matrices) {
  return {static_cast<int>((n + kMmaRows - 1) / kMmaRows), 1,
          static_cast<int>(matrices)};
}

/// Whether the mma GEMM takes these operands: k a multiple of 8 (whole
/// 16-byte weight loads), activations at 16-byte (float) or 8-byte (e4m3
/// codes) boundaries, and FP8 scale blocks of whole warps and steps.
KILN_HOST_FN bool mmaGemmFits(int64_t k, bool fp8, bool codes,
                              int64_t blockRows, int64_t blockCols,
                              int64_t xRowStride, int64_t xMatrixStride) {
  int64_t align = codes ? 8 : 4; // elements in 8 / 16 bytes
  if (k % 8 != 0 || xRowStride % align != 0 || xMatrixStride % align != 0)
    return false;
  return !fp8 || (blockRows > 0 && blockCols > 0 && blockRows % kMmaRows == 0 &&
                  blockCols % kMmaStep == 0);
}

/// Eight weights of a row as four bf16 pairs; zeros at or past `k`.
KILN_FN void loadWeightWords(const Bf16 *row, int64_t at, int64_t k,
                             uint32_t *words) {
  if (at >= k) {
    words[0] = words[1] = words[2] = words[3] = 0;
    return;
  }
#if defined(__CUDACC__)
  uint4 bits = *reinterpret_cast<const uint4 *>(row + at);
  words[0] = bits.x, words[1] = bits.y, words[2] = bits.z, words[3] = bits.w;
#else
  requireAlignedLoad(row + at, 16);
  for (int j = 0; j < 4; ++j)
    words[j] = uint32_t{row[at + 2 * j].bits} |
               (uint32_t{row[at + 2 * j + 1].bits} << 16);
#endif
}

/// e4m3 weights widened to bf16 (exactly: e4m3 has 3 mantissa bits).
KILN_FN uint32_t e4m3PairToBf16(uint32_t codes) {
  return (bitsFromFloat(decodeE4m3(codes & 0xffu)) >> 16) |
         (bitsFromFloat(decodeE4m3((codes >> 8) & 0xffu)) & 0xffff0000u);
}
KILN_FN void loadWeightWords(const unsigned char *row, int64_t at, int64_t k,
                             uint32_t *words) {
  if (at >= k) {
    words[0] = words[1] = words[2] = words[3] = 0;
    return;
  }
  uint32_t low, high;
#if defined(__CUDACC__)
  uint2 bits = *reinterpret_cast<const uint2 *>(row + at);
  low = bits.x, high = bits.y;
#else
  requireAlignedLoad(row + at, 8);
  low = high = 0;
  for (int j = 0; j < 4; ++j) {
    low |= uint32_t{row[at + j]} << (8 * j);
    high |= uint32_t{row[at + 4 + j]} << (8 * j);
  }
#endif
  words[0] = e4m3PairToBf16(low), words[1] = e4m3PairToBf16(low >> 16);
  words[2] = e4m3PairToBf16(high), words[3] = e4m3PairToBf16(high >> 16);
}

/// Eight activations of a token as four bf16 pairs; zeros past `k` or for
/// a token past the pass (`valid` false).
KILN_FN void loadActivationWords(const float *x, int64_t at, int64_t k,
                                 bool valid, uint32_t *words) {
  if (!valid || at >= k) {
    words[0] = words[1] = words[2] = words[3] = 0;
    return;
  }
  float v[8];
#if defined(__CUDACC__)
  float4 lo = *reinterpret_cast<const float4 *>(x + at);
  float4 hi = *reinterpret_cast<const float4 *>(x + at + 4);
  v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
  v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
#else
  requireAlignedLoad(x + at, 16);
  for (int j = 0; j < 8; ++j)
    v[j] = x[at + j];
#endif
  for (int j = 0; j < 4; ++j)
    words[j] = packBf16x2(v[2 * j], v[2 * j + 1]);
}
/// Activations a fused kernel quantized: e4m3 codes, widened as weights are.
KILN_FN void loadActivationWords(const unsigned char *x, int64_t at, int64_t k,
                                 bool valid, uint32_t *words) {
  loadWeightWords(x, valid ? at : k, k, words);
}

#if KILN_SIMT
/// Shared memory for sumOverWarps, one array for every pass width.
typedef MmaC MmaPartials[kMmaFragments][32];
KILN_FN MmaPartials *mmaPartials() {
  KILN_SHARED MmaPartials partials[kMmaWarps];
  return partials;
}
#endif

/// The sum of the block's warps' accumulators, in warp 0's (true there).
template <int F> KILN_FN bool sumOverWarps(Lanes<MmaC> *acc) {
#if KILN_SIMT
  MmaPartials *partial = mmaPartials();
  for (int f = 0; f < F; ++f)
    partial[KILN_WARP][f][KILN_LANE] = acc[f].value;
  KILN_SYNC();
  if (KILN_WARP == 0)
    for (int w = 1; w < kMmaWarps; ++w)
      for (int f = 0; f < F; ++f)
        for (int i = 0; i < 4; ++i)
          acc[f].value.r[i] += partial[w][f][KILN_LANE].r[i];
  KILN_SYNC(); // `partial` is free for the next pass
  return KILN_WARP == 0;
#else
  (void)acc;
  return true; // the host's one warp did every step
#endif
}

/// Tokens [first, first + count) (count <= 8F) of `matrix` against the
/// block's weight rows. Gated (p.wUp): the block's rows of the gate and of
/// the up projection, each step's gate products then its up products into
/// their own sums (the order two plain GEMMs sum in), and the block writes
/// silu(gate) * up.
template <class W, bool Fp8, class A, int F, bool Gated>
KILN_FN void mmaGemmPass(Dim3 block, const GemmParams &p, int64_t matrix,
                         int64_t first, int count) {
  constexpr int kProjections = Gated ? 2 : 1;
  auto [x, xScale, xScaleStride, kBlocks, nBlocks] =
      gemmPass<A, Fp8>(p, matrix, first);
  int64_t n0 = int64_t{block.x} * kMmaRows;
  int64_t scaleAt =
      Fp8 ? (matrix * nBlocks + n0 / p.blockRows) * kBlocks : int64_t{0};
  Lanes<MmaC> acc[kProjections][F];
  for (int m = 0; m < kProjections; ++m)
    for (int f = 0; f < F; ++f)
      KILN_FOR_EACH_LANE(lane) {
        for (int i = 0; i < 4; ++i)
          acc[m][f][lane].r[i] = 0.0f;
      }
  for (int64_t k0 = int64_t{KILN_WARP} * kMmaStep; k0 < p.k;
       k0 += int64_t{KILN_WARPS} * kMmaStep) {
    KILN_UNROLL
    for (int m = 0; m < kProjections; ++m) {
      const W *w = static_cast<const W *>(m ? p.wUp : p.w);
      const float *wScale =
          Fp8 ? (m ? p.wUpScale : p.wScale) + scaleAt : nullptr;
      // The step's weights first: 8 loads of each lane in flight.
      Lanes<MmaA> a[2 * kMmaStep / kMmaSlab];
      KILN_FOR_EACH_LANE(lane) {
        int g = lane / 4, t = lane % 4;
        const W *low = w + (matrix * p.n + n0 + g) * p.k;
        const W *high = low + 8 * p.k;
        bool lowValid = n0 + g < p.n, highValid = n0 + g + 8 < p.n;
        KILN_UNROLL
        for (int s = 0; s < kMmaStep / kMmaSlab; ++s) {
          int64_t at = k0 + s * kMmaSlab + 8 * t;
          uint32_t lo[4], hi[4];
          loadWeightWords(low, lowValid ? at : p.k, p.k, lo);
          loadWeightWords(high, highValid ? at : p.k, p.k, hi);
          a[2 * s][lane] = MmaA{{lo[0], hi[0], lo[1], hi[1]}};
          a[2 * s + 1][lane] = MmaA{{lo[2], hi[2], lo[3], hi[3]}};
        }
      }
      KILN_UNROLL
      for (int f = 0; f < F; ++f) {
        if (f * 8 >= count)
          break; // warp-uniform
        Lanes<MmaC> part;
        Lanes<MmaC> &sum = Fp8 ? part : acc[m][f];
        if (Fp8)
          KILN_FOR_EACH_LANE(lane) {
            for (int i = 0; i < 4; ++i)
              part[lane].r[i] = 0.0f;
          }
        KILN_UNROLL
        for (int s = 0; s < kMmaStep / kMmaSlab; ++s) {
          Lanes<MmaB> b[2];
          KILN_FOR_EACH_LANE(lane) {
            int g = lane / 4, t = lane % 4, token = f * 8 + g;
            uint32_t words[4];
            loadActivationWords(x + token * p.xRowStride,
                                k0 + s * kMmaSlab + 8 * t, p.k, token < count,
                                words);
            b[0][lane] = MmaB{{words[0], words[1]}};
            b[1][lane] = MmaB{{words[2], words[3]}};
          }
          mmaBf16(sum, a[2 * s], b[0]);
          mmaBf16(sum, a[2 * s + 1], b[1]);
        }
        if (Fp8) {
          // One step lies in one scale block (mmaGemmFits).
          int kBlock = static_cast<int>(k0 / p.blockCols);
          float weightScale = wScale[kBlock];
          KILN_FOR_EACH_LANE(lane) {
            int t = lane % 4;
            for (int i = 0; i < 4; ++i) {
              int token = f * 8 + 2 * t + i % 2;
              float tokenScale =
                  token < count ? xScale[token * xScaleStride + kBlock] : 0.0f;
              acc[m][f][lane].r[i] +=
                  part[lane].r[i] * weightScale * tokenScale;
            }
          }
        }
      }
    }
  }
  // Every warp takes part in each sum (they synchronize).
  bool lead = sumOverWarps<F>(acc[0]);
  if (Gated)
    sumOverWarps<F>(acc[kProjections - 1]);
  if (!lead)
    return;
  KILN_UNROLL
  for (int f = 0; f < F; ++f)
    KILN_FOR_EACH_LANE(lane) {
      int g = lane / 4, t = lane % 4;
      for (int i = 0; i < 4; ++i) {
        int token = f * 8 + 2 * t + i % 2;
        int64_t n = n0 + g + 8 * (i / 2);
        if (token < count && n < p.n)
          p.out[matrix * p.outMatrixStride + (first + token) * p.outRowStride +
                n] = Gated ? swiglu(acc[0][f][lane].r[i],
                                    acc[kProjections - 1][f][lane].r[i])
                           : acc[0][f][lane].r[i] + loadBias(p, n);
      }
    }
}

/// The rows gemmRows gives the block, 8 * kMmaFragments tokens per pass,
/// with as few mma columns as the pass's tokens need.
template <class W, bool Fp8, class A, bool Gated>
KILN_FN void mmaGemmBlock(Dim3 block, const GemmParams &p) {
  auto [matrix, first, end] = gemmRows(block, p);
  constexpr int kPass = 8 * kMmaFragments;
  for (; first < end; first += kPass) {
    int count = end - first < kPass ? static_cast<int>(end - first) : kPass;
    if (count <= 8)
      mmaGemmPass<W, Fp8, A, 1, Gated>(block, p, matrix, first, count);
    else if (count <= 16)
      mmaGemmPass<W, Fp8, A, 2, Gated>(block, p, matrix, first, count);
    else
      mmaGemmPass<W, Fp8, A, kMmaFragments, Gated>(block, p, matrix, first,
                                                   count);
  }
}

/// The weight rows mmaGemmBlock's block reads.
template <class W>
KILN_FN void prefetchMmaGemmBlock(Dim3 block, const GemmParams &p) {
  prefetchWeightRows<W>(p, block.z, int64_t{block.x} * kMmaRows, kMmaRows);
}

#define KILN_MMA_GEMM_KERNEL(suffix, W, Fp8, A, Gated)                         \
  KILN_FN void kiln_gemm_mma_##suffix##_block(Dim3 block,                      \
                                              const GemmParams &p) {           \
    mmaGemmBlock<W, Fp8, A, Gated>(block, p);                                  \
  }                                                                            \
  KILN_KERNEL_PREFETCHING(kiln_gemm_mma_##suffix, GemmParams,                  \
                          prefetchMmaGemmBlock<W>)
KILN_MMA_GEMM_KERNEL(bf16, Bf16, false, float, false)
KILN_MMA_GEMM_KERNEL(f8e4m3, unsigned char, true, float, false)
KILN_MMA_GEMM_KERNEL(f8e4m3_q8, unsigned char, true, unsigned char, false)
// silu(x Wg^T) * (x Wu^T) in one launch: a SwiGLU FFN's or an expert's two
// projections (GemmParams.wUp).
KILN_MMA_GEMM_KERNEL(gated_bf16, Bf16, false, float, true)
KILN_MMA_GEMM_KERNEL(gated_f8e4m3, unsigned char, true, float, true)
KILN_MMA_GEMM_KERNEL(gated_f8e4m3_q8, unsigned char, true, unsigned char, true)
#undef KILN_MMA_GEMM_KERNEL

KILN_KERNELS_END

#endif // KILN_KERNELS_MMA_GEMM_H
