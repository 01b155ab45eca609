// The CUDA executor's GEMMs: out[m, n] = x[m, :] . w[n, :] (+ bias[n]) for
// f32 activations and f32 / bf16 / f16 / FP8 (block-scaled) weights, as
// cpu::linear, cpu::headLinear (one matrix per head: grid.z) and
// cpu::groupedLinear (rows grouped by expert through device-side offsets,
// so no count reaches the host). The host builds are tested against the CPU
// kernels in tests/runtime/MatmulKernelTest.cpp. cuBLASLt takes dense bf16
// and block-scaled FP8 GEMMs of many rows, and a prefill's experts one by
// one (CudaExecutorGemms.cpp); these kernels take the rest.
//
// Each warp owns one weight row (output column) and streams it, 8
// consecutive weights per lane per step (one 16-byte load for bf16/f16
// where the row allows, and the activations' 8 in two; eight steps in
// flight: a 2048-wide bf16 row in one round trip; no bounds checks between
// them where k is a multiple of 8), applying them to up to kGemmRows
// activation rows at once;
// warp sums, no block synchronization. More rows take more passes over the
// block's weight rows (from L1/L2 after the first). Grouped GEMMs read only
// the experts with rows. FP8 GEMMs read activations quantized beforehand by
// kiln_quantize_rows (e4m3 codes decoded back to floats, and one scale per
// row per block of K), as the CPU FP8 GEMMs do.
#ifndef KILN_KERNELS_MATMUL_H
#define KILN_KERNELS_MATMUL_H

#include "FusedPrelude.h"

KILN_KERNELS_BEGIN

/// Activation rows one pass over the weights takes.
constexpr int kGemmRows = 8;

enum GemmBias { NoBias = 0, BiasF32 = 1, BiasBf16 = 2, BiasF16 = 3 };

struct GemmParams {
  const float *x; // [rows, k] per matrix
  /// FP8 activations quantized beforehand as e4m3 bytes (kiln.quantize_fp8
  /// in a fused kernel's epilogue), in place of x; scales in xScale.
  const unsigned char *xCodes;
  const float *xScale;   // FP8: [rows, ceil(k / blockCols)] activation scales
  int64_t xMatrixStride; // elements between matrices' rows (head GEMMs)
  const void *w;         // [matrices, n, k]
  const float
      *wScale;      // FP8: [matrices, ceil(n / blockRows), ceil(k / blockCols)]
  const void *bias; // [n]
  int biasType;
  float *out; // [rows, n] per matrix
  int64_t xRowStride, outRowStride, outMatrixStride;
  int64_t rows, n, k;
  int64_t blockRows, blockCols;
  /// Grouped GEMMs: rows [offsets[e], offsets[e + 1]) use matrix e; the
  /// rows in all are offsets[experts]. Null otherwise.
  const int32_t *offsets;
  int experts;
  /// Grouped GEMMs, optional: the number of experts with rows, then those
  /// experts in order (kiln_moe_route writes it). Block z then takes the
  /// z-th of them, so a decode step's grid spans the routed experts instead
  /// of all of them (batch 1, top-6 of 64: 6 instead of 64 matrices of
  /// blocks, most of which would find no rows and exit).
  const int32_t *activeExperts;
  /// Gated GEMVs (kiln.gated_linear): the up projection's weights, laid
  /// out as w, and their FP8 block scales as wScale; `w` is the gate's.
  /// out = silu(x w^T) * (x wUp^T).
  const void *wUp;
  const float *wUpScale;
  /// FP8 GEMVs that quantize their f32 activations themselves
  /// (kiln_gemv_*f8e4m3_qin): power-of-two (UE8M0) activation scales.
  int actPow2;
  /// Grouped GEMVs of a decode step's few routed rows, in place of offsets
  /// (the executor's choice): routed row r, the (r % topK)-th selection of
  /// token r / topK, uses matrix selections[r] and activation row
  /// r / selectionFanOut (topK where x holds the tokens' rows, 1 where it
  /// holds the routed rows), which the quantizing FP8 GEMVs quantize. No
  /// route sorts them and no gather copies them. Block z takes routed row z.
  const int32_t *selections;
  int selectionFanOut;
  /// With selections, optional: each routed row r's entry set to r (the
  /// slot inverse a combine reads, which no route writes then).
  int32_t *selectionRows;
  /// Nonzero: the blocks do not ask the L2 for their weights before
  /// awaiting the kernels before them (prefetchWeightRows; KILN_PREFETCH=off).
  int noPrefetch;
};

/// The grid's z extent of a GEMM over `matrices` matrices: with
/// activeExperts, no more than the rows can have experts.
KILN_HOST_FN int64_t gemmGridMatrices(const GemmParams &p, int64_t matrices) {
  if (p.selections)
    return p.rows;
  if (p.offsets && p.activeExperts)
    return p.rows < matrices ? (p.rows > 0 ? p.rows : 1) : matrices;
  return matrices;
}

/// The matrix block.z covers and its rows [first, end): dense and head
/// GEMMs matrix grid.z's p.rows rows; grouped ones (p.offsets) the rows of
/// expert grid.z, or with activeExperts of the z-th expert that has rows
/// (none past the last).
struct GemmRows {
  int matrix;
  int64_t first, end;
};
KILN_FN GemmRows gemmRows(Dim3 block, const GemmParams &p) {
  if (p.selections) {
    // An expert out of range gets no rows, as the route skips it.
    int expert = p.selections[block.z];
    bool valid = expert >= 0 && expert < p.experts;
    return {valid ? expert : 0, block.z, valid ? block.z + 1 : block.z};
  }
  if (!p.offsets)
    return {block.z, 0, p.rows};
  int matrix = block.z;
  if (p.activeExperts) {
    if (block.z >= p.activeExperts[0])
      return {0, 0, 0};
    matrix = p.activeExperts[1 + block.z];
  }
  return {matrix, p.offsets[matrix], p.offsets[matrix + 1]};
}

/// The activations a GEMM reads: floats, or e4m3 codes (xCodes).
template <class A> KILN_FN const A *activations(const GemmParams &p);
template <> KILN_FN const float *activations<float>(const GemmParams &p) {
  return p.x;
}
template <>
KILN_FN const unsigned char *activations<unsigned char>(const GemmParams &p) {
  return p.xCodes;
}

KILN_FN float loadBias(const GemmParams &p, int64_t n) {
  switch (p.biasType) {
  case BiasF32:
    return static_cast<const float *>(p.bias)[n];
  case BiasBf16:
    return toFloat(static_cast<const Bf16 *>(p.bias)[n]);
  case BiasF16:
    return toFloat(static_cast<const F16 *>(p.bias)[n]);
  default:
    return 0.0f;
  }
}

/// Output columns per block: one per warp, so that GEMVs of a few thousand
/// columns still spread over every multiprocessor.
constexpr int kGemvCols = KILN_BLOCK_THREADS / 32;

inline Dim3 gemvGrid(int64_t n, int64_t matrices) {
  return {static_cast<int>((n + kGemvCols - 1) / kGemvCols), 1,
          static_cast<int>(matrices)};
}

/// What a pass over rows [first, ...) of `matrix` reads: the activations
/// of row `first`; FP8: its activation scales and the distance between two
/// rows' (rows are whole multiples of k apart, so that the GEMMs' loops do
/// no 64-bit division per row), and the scale blocks along k and n.
template <class A> struct GemmPass {
  const A *x;
  const float *xScale;
  int64_t xScaleStride, kBlocks, nBlocks;
};
template <class A, bool Fp8>
KILN_FN GemmPass<A> gemmPass(const GemmParams &p, int64_t matrix,
                             int64_t first) {
  int64_t kBlocks = Fp8 ? (p.k + p.blockCols - 1) / p.blockCols : 1;
  int64_t row = first * p.xRowStride + matrix * p.xMatrixStride;
  return {activations<A>(p) + row,
          Fp8 ? p.xScale + row / p.k * kBlocks : nullptr,
          Fp8 ? p.xRowStride / p.k * kBlocks : 0, kBlocks,
          Fp8 ? (p.n + p.blockRows - 1) / p.blockRows : 1};
}

/// Rows [first, first + count) (count <= R <= kGemmRows) of `matrix`
/// against the block's kGemvCols weight rows; their activations are rows
/// [xFirst, xFirst + count) of p's (first, or 0 where a block quantized
/// them into shared memory). R sizes the accumulators: a
/// single decode row keeps few registers, so more warps (and their loads)
/// fit on a multiprocessor. Gated: each warp also streams the up
/// projection's row n, applies it to the same activations and writes
/// silu(gate) * up (the gate and up sums are those of two plain GEMVs).
template <class W, bool Fp8, class A, int R, bool Whole, bool Gated>
KILN_FN void gemvRows(Dim3 block, const GemmParams &p, int64_t matrix,
                      int64_t first, int64_t xFirst, int count) {
  const W *w = static_cast<const W *>(p.w);
  const W *wUp = static_cast<const W *>(p.wUp);
  auto [x, xScale, xScaleStride, kBlocks, nBlocks] =
      gemmPass<A, Fp8>(p, matrix, xFirst);
  // The gated accumulators and loads exist only in gated kernels.
  constexpr int kUpRows = Gated ? R : 1;
  constexpr int kUpWeights = Gated ? 8 : 1;
  for (int c = KILN_WARP; c < kGemvCols; c += KILN_WARPS) {
    int64_t n = int64_t{block.x} * kGemvCols + c;
    if (n >= p.n)
      break; // warp-uniform
    int64_t rowAt = (matrix * p.n + n) * p.k;
    const W *row = w + rowAt;
    const W *upRow = Gated ? wUp + rowAt : nullptr;
    int64_t scaleAt =
        Fp8 ? (matrix * nBlocks +
               static_cast<int>(n) / static_cast<int>(p.blockRows)) *
                  kBlocks
            : 0;
    const float *wScale = Fp8 ? p.wScale + scaleAt : nullptr;
    const float *upScale = Fp8 && Gated ? p.wUpScale + scaleAt : nullptr;
    float acc[R], upAcc[kUpRows];
    for (int r = 0; r < R; ++r)
      acc[r] = 0.0f;
    for (int r = 0; r < kUpRows; ++r)
      upAcc[r] = 0.0f;
    KILN_UNROLL8
    for (int64_t k = int64_t{KILN_LANE} * 8; k < p.k;
         k += int64_t{KILN_WARP_SIZE} * 8) {
      float weights[8], upWeights[kUpWeights];
      if (Whole)
        loadEightWhole(row + k, weights);
      else
        loadEight(row + k, p.k - k, weights);
      if (Gated) {
        if (Whole)
          loadEightWhole(upRow + k, upWeights);
        else
          loadEight(upRow + k, p.k - k, upWeights);
      }
      // FP8: the 8 weights share one K block (the executor sends blockCols
      // that are multiples of 8 here), so each row's chunk sum is scaled
      // once by the weight's and the activation's block scale.
      // 32-bit: a 64-bit division is a call that costs registers.
      int kBlock =
          Fp8 ? static_cast<int>(k) / static_cast<int>(p.blockCols) : 0;
      float weightScale = Fp8 ? wScale[kBlock] : 1.0f;
      float upWeightScale = Fp8 && Gated ? upScale[kBlock] : 1.0f;
      // Constant trip counts keep acc and weights in registers.
      KILN_UNROLL
      for (int r = 0; r < R; ++r) {
        if (r >= count)
          break;
        // Activations as the weights: whole (two 16-byte loads of floats,
        // one 8-byte load of e4m3 codes), zeros past k otherwise. Eight
        // scalar loads a step would cost the L1 more than the weights.
        const A *a = x + r * p.xRowStride + k;
        float values[8];
        if (Whole)
          loadEightWhole(a, values);
        else
          loadEight(a, p.k - k, values);
        float sum = 0.0f;
        KILN_UNROLL
        for (int j = 0; j < 8; ++j)
          sum += values[j] * weights[j];
        float activationScale = Fp8 ? xScale[r * xScaleStride + kBlock] : 1.0f;
        if (Fp8)
          sum *= weightScale * activationScale;
        acc[r] += sum;
        if (Gated) {
          float upSum = 0.0f;
          KILN_UNROLL
          for (int j = 0; j < kUpWeights; ++j)
            upSum += values[j] * upWeights[j];
          if (Fp8)
            upSum *= upWeightScale * activationScale;
          upAcc[Gated ? r : 0] += upSum;
        }
      }
    }
    KILN_UNROLL
    for (int r = 0; r < R; ++r) {
      if (r >= count)
        break;
      float total = warpSum(acc[r]);
      float up = Gated ? warpSum(upAcc[Gated ? r : 0]) : 0.0f;
      if (KILN_LANE == 0)
        p.out[matrix * p.outMatrixStride + (first + r) * p.outRowStride + n] =
            Gated ? swiglu(total, up) : total + loadBias(p, n);
    }
  }
}

/// Rows one pass of a GEMV takes: gated ones keep two accumulators per
/// row, so half as many rows (8 spilled in ptxas at 128 registers).
template <bool Gated>
constexpr int kGemvPassRows = Gated ? kGemmRows / 2 : kGemmRows;

/// gemvRows with the fewest accumulators that hold `count` rows.
template <class W, bool Fp8, class A, bool Whole, bool Gated>
KILN_FN void gemvSomeRows(Dim3 block, const GemmParams &p, int64_t matrix,
                          int64_t first, int64_t xFirst, int count) {
  if (count == 1)
    gemvRows<W, Fp8, A, 1, Whole, Gated>(block, p, matrix, first, xFirst,
                                         count);
  else if (count <= 4)
    gemvRows<W, Fp8, A, 4, Whole, Gated>(block, p, matrix, first, xFirst,
                                         count);
  else if constexpr (!Gated)
    gemvRows<W, Fp8, A, kGemmRows, Whole, Gated>(block, p, matrix, first,
                                                 xFirst, count);
}

/// Whether every 8-value step of the weight and activation rows is whole
/// and aligned for loadEightWhole: then no bounds checks separate the loads
/// of the unrolled steps.
template <class W, class A> KILN_FN bool gemvWholeSteps(const GemmParams &p) {
  return p.k % 8 == 0 && p.xRowStride % 8 == 0 && p.xMatrixStride % 8 == 0 &&
         wholeLoadAligned(static_cast<const W *>(p.w)) &&
         (!p.wUp || wholeLoadAligned(static_cast<const W *>(p.wUp))) &&
         wholeLoadAligned(activations<A>(p));
}

/// In selection order, block z's entry of selectionRows (z, also for an
/// expert out of range), written from the first column block.
KILN_FN void writeSelectionRow(Dim3 block, const GemmParams &p, int64_t first) {
  if (p.selectionRows && block.x == 0 && KILN_THREAD == 0)
    p.selectionRows[first] = static_cast<int32_t>(first);
}

/// The activation row of routed row `row`: in selection order its token's
/// (where x holds the tokens) or its own.
KILN_FN int64_t gemvActivationRow(const GemmParams &p, int64_t row) {
  return p.selections ? row / p.selectionFanOut : row;
}

/// The rows gemmRows gives the block, kGemvPassRows at a time; grouped GEMMs
/// read only the experts that have rows.
template <class W, bool Fp8, class A = float, bool Gated = false>
KILN_FN void gemvBlock(Dim3 block, const GemmParams &p) {
  auto [matrix, first, end] = gemmRows(block, p);
  writeSelectionRow(block, p, first);
  // e4m3 activation codes keep the checked loads: the whole-step variant
  // of their GEMV spills (ptxas, 32 bytes at 96 registers).
  bool whole = sizeof(A) == sizeof(float) && gemvWholeSteps<W, A>(p);
  constexpr int passRows = kGemvPassRows<Gated>;
  for (; first < end; first += passRows) {
    int count =
        end - first < passRows ? static_cast<int>(end - first) : passRows;
    // A selection's one row reads its token's activations.
    int64_t xFirst = gemvActivationRow(p, first);
    if (whole)
      gemvSomeRows<W, Fp8, A, true, Gated>(block, p, matrix, first, xFirst,
                                           count);
    else
      gemvSomeRows<W, Fp8, A, false, Gated>(block, p, matrix, first, xFirst,
                                            count);
  }
}

/// Weight rows [first, first + rows) of matrix `matrix` (w, and wUp where
/// gated), as far as the matrix goes, asked of the L2 by a dense or
/// per-head GEMM's block before it awaits the kernels before it. A grouped
/// GEMM's experts come from those kernels (the route, the gate's
/// selections), so it asks for nothing.
template <class W>
KILN_FN void prefetchWeightRows(const GemmParams &p, int64_t matrix,
                                int64_t first, int64_t rows) {
  if (p.offsets || p.selections || p.noPrefetch)
    return;
  if (first + rows > p.n)
    rows = p.n - first;
  if (rows <= 0)
    return;
  int64_t at = (matrix * p.n + first) * p.k;
  int64_t bytes = rows * p.k * static_cast<int64_t>(sizeof(W));
  prefetchToL2(static_cast<const W *>(p.w) + at, bytes);
  if (p.wUp)
    prefetchToL2(static_cast<const W *>(p.wUp) + at, bytes);
}

/// The weight rows gemvBlock's block reads.
template <class W>
KILN_FN void prefetchGemvBlock(Dim3 block, const GemmParams &p) {
  prefetchWeightRows<W>(p, block.z, int64_t{block.x} * kGemvCols, kGemvCols);
}

#define KILN_GEMV_KERNEL(suffix, W, Fp8)                                       \
  KILN_FN void kiln_gemv_##suffix##_block(Dim3 block, const GemmParams &p) {   \
    gemvBlock<W, Fp8>(block, p);                                               \
  }                                                                            \
  KILN_KERNEL_PREFETCHING(kiln_gemv_##suffix, GemmParams,                      \
                          prefetchGemvBlock<W>)                                \
  KILN_FN void kiln_gemv_gated_##suffix##_block(Dim3 block,                    \
                                                const GemmParams &p) {         \
    gemvBlock<W, Fp8, float, true>(block, p);                                  \
  }                                                                            \
  KILN_KERNEL_PREFETCHING(kiln_gemv_gated_##suffix, GemmParams,                \
                          prefetchGemvBlock<W>)
KILN_GEMV_KERNEL(f32, float, false)
KILN_GEMV_KERNEL(bf16, Bf16, false)
KILN_GEMV_KERNEL(f16, F16, false)
KILN_GEMV_KERNEL(f8e4m3, unsigned char, true)
#undef KILN_GEMV_KERNEL

/// FP8 weights against activations a fused kernel quantized (xCodes).
KILN_FN void kiln_gemv_f8e4m3_q8_block(Dim3 block, const GemmParams &p) {
  gemvBlock<unsigned char, true, unsigned char>(block, p);
}
KILN_KERNEL_PREFETCHING(kiln_gemv_f8e4m3_q8, GemmParams,
                        prefetchGemvBlock<unsigned char>)
KILN_FN void kiln_gemv_gated_f8e4m3_q8_block(Dim3 block, const GemmParams &p) {
  gemvBlock<unsigned char, true, unsigned char, true>(block, p);
}
KILN_KERNEL_PREFETCHING(kiln_gemv_gated_f8e4m3_q8, GemmParams,
                        prefetchGemvBlock<unsigned char>)

/// FP8 GEMVs of f32 activations that quantize them themselves, as
/// kiln_quantize_rows would before kiln_gemv_f8e4m3: a block quantizes the
/// rows of each pass into shared memory (e4m3 codes and 1 x blockCols
/// scales), then runs the e4m3-code GEMV over them. A decode step so saves
/// the quantization's launch. Each block quantizes its own copy; a warp
/// takes a block of columns at a time (its amax is exact in any order, so
/// codes and scales are kiln_quantize_rows' to the bit, and the results its
/// GEMV's).
constexpr int64_t kGemvQuantizeBytes = 16384;
constexpr int64_t kGemvQuantizeScales = 512;

/// Whether a row of k activations in blocks of blockCols fits the shared
/// memory of kiln_gemv_*f8e4m3_qin.
KILN_HOST_FN bool gemvQuantizesRows(int64_t k, int64_t blockCols) {
  return k >= 1 && k <= kGemvQuantizeBytes && blockCols >= 1 &&
         (k + blockCols - 1) / blockCols <= kGemvQuantizeScales;
}

/// Rows [xFirst, xFirst + count) of `matrix`'s activations into codes
/// [count, k] and scales [count, ceil(k / blockCols)].
KILN_FN void quantizeGemvRows(const GemmParams &p, int64_t matrix,
                              int64_t xFirst, int count, unsigned char *codes,
                              float *scales) {
  int64_t kBlocks = (p.k + p.blockCols - 1) / p.blockCols;
  for (int64_t g = KILN_WARP; g < count * kBlocks; g += KILN_WARPS) {
    int64_t r = g / kBlocks, c0 = g % kBlocks * p.blockCols;
    int64_t c1 = c0 + p.blockCols < p.k ? c0 + p.blockCols : p.k;
    const float *x =
        p.x + (xFirst + r) * p.xRowStride + matrix * p.xMatrixStride;
    float amax = 0.0f;
    for (int64_t c = c0 + KILN_LANE; c < c1; c += KILN_WARP_SIZE)
      amax = fmaxf(amax, fabsf(x[c]));
    float s = fp8ScaleOf(warpMax(amax), p.actPow2);
    for (int64_t c = c0 + KILN_LANE; c < c1; c += KILN_WARP_SIZE)
      codes[r * p.k + c] = encodeE4m3(x[c] / s);
    if (KILN_LANE == 0)
      scales[g] = s;
  }
}

template <bool Gated>
KILN_FN void gemvQuantizingBlock(Dim3 block, const GemmParams &p) {
  KILN_SHARED unsigned char codes[kGemvQuantizeBytes];
  KILN_SHARED float scales[kGemvQuantizeScales];
  auto [matrix, first, end] = gemmRows(block, p);
  writeSelectionRow(block, p, first);
  int64_t kBlocks = (p.k + p.blockCols - 1) / p.blockCols;
  int64_t fit = kGemvQuantizeBytes / p.k < kGemvQuantizeScales / kBlocks
                    ? kGemvQuantizeBytes / p.k
                    : kGemvQuantizeScales / kBlocks;
  int passRows =
      fit < kGemvPassRows<Gated> ? static_cast<int>(fit) : kGemvPassRows<Gated>;
  GemmParams q = p;
  q.x = nullptr;
  q.xCodes = codes;
  q.xScale = scales;
  q.xRowStride = p.k;
  q.xMatrixStride = 0;
  for (; first < end; first += passRows) {
    int count =
        end - first < passRows ? static_cast<int>(end - first) : passRows;
    KILN_SYNC(); // the last pass has read its codes
    quantizeGemvRows(p, matrix, gemvActivationRow(p, first), count, codes,
                     scales);
    KILN_SYNC();
    gemvSomeRows<unsigned char, true, unsigned char, false, Gated>(
        block, q, matrix, first, 0, count);
  }
}

KILN_FN void kiln_gemv_f8e4m3_qin_block(Dim3 block, const GemmParams &p) {
  gemvQuantizingBlock<false>(block, p);
}
KILN_KERNEL_PREFETCHING(kiln_gemv_f8e4m3_qin, GemmParams,
                        prefetchGemvBlock<unsigned char>)
KILN_FN void kiln_gemv_gated_f8e4m3_qin_block(Dim3 block, const GemmParams &p) {
  gemvQuantizingBlock<true>(block, p);
}
KILN_KERNEL_PREFETCHING(kiln_gemv_gated_f8e4m3_qin, GemmParams,
                        prefetchGemvBlock<unsigned char>)

/// FP8 activation quantization, as the CPU FP8 GEMMs: per row, per
/// `blockCols` values, s = max(amax, 1e-4) / 448 (rounded up to a power of
/// two when pow2), codes e4m3(x / s), written back decoded (code values as
/// floats) with the scales. One block per row; rows counted on the device
/// when `rowsOnDevice` is set (routed rows).
struct QuantizeRowsParams {
  const float *x;
  float *codes;  // [rows, k]
  float *scales; // [rows, ceil(k / blockCols)]
  const int32_t *rowsOnDevice;
  int64_t k, blockCols;
  int pow2;
};

KILN_FN void kiln_quantize_rows_block(Dim3 block, const QuantizeRowsParams &p) {
  if (p.rowsOnDevice && block.x >= *p.rowsOnDevice)
    return;
  const float *x = p.x + int64_t{block.x} * p.k;
  float *codes = p.codes + int64_t{block.x} * p.k;
  int64_t groups = (p.k + p.blockCols - 1) / p.blockCols;
  for (int64_t g = 0; g < groups; ++g) {
    int64_t c0 = g * p.blockCols;
    int64_t c1 = c0 + p.blockCols < p.k ? c0 + p.blockCols : p.k;
    float s = fp8BlockScale(x, c0, c1, p.pow2);
    for (int64_t c = c0 + KILN_THREAD; c < c1; c += KILN_THREADS)
      codes[c] = decodeE4m3(encodeE4m3(x[c] / s));
    if (KILN_THREAD == 0)
      p.scales[int64_t{block.x} * groups + g] = s;
  }
}
KILN_KERNEL(kiln_quantize_rows, QuantizeRowsParams)

/// Rows between blocks of cuBLASLt's token-minor VEC128 activation scales:
/// the rows rounded up to 4 (16-byte aligned blocks, as TransformerEngine
/// lays them out for it).
KILN_HOST_FN int64_t cublasScaleStride(int64_t rows) {
  return (rows + 3) / 4 * 4;
}

/// kiln.quantize_fp8 run on its own (a fused group executed as its ops):
/// codes as e4m3 bytes [rows, k], scales [rows, ceil(k / blockCols)], or,
/// for cuBLASLt's block-scaled GEMM (scaleStride = cublasScaleStride(rows)),
/// token-minor [ceil(k / blockCols), scaleStride]. One block per row.
struct QuantizeFp8Params {
  const float *x;
  unsigned char *codes;
  float *scales;
  int64_t k, blockCols;
  int pow2;
  int64_t scaleStride; // 0: token-major
};

KILN_FN void kiln_quantize_fp8_block(Dim3 block, const QuantizeFp8Params &p) {
  int64_t groups = (p.k + p.blockCols - 1) / p.blockCols;
  int64_t row = block.x;
  quantizeFp8(p.x + row * p.k, p.k, p.blockCols, p.pow2, p.codes + row * p.k,
              p.scaleStride ? p.scales + row : p.scales + row * groups,
              p.scaleStride ? p.scaleStride : 1);
}
KILN_KERNEL(kiln_quantize_fp8, QuantizeFp8Params)

/// Activation scales a fused kernel wrote token-major [rows, groups],
/// rewritten token-minor [groups, stride] (stride = cublasScaleStride(rows))
/// for cuBLASLt's VEC128 layout. One block per row.
struct Fp8ScalesByBlockParams {
  const float *scales;
  float *out;
  int64_t stride, groups;
};

KILN_FN void kiln_fp8_scales_by_block_block(Dim3 block,
                                            const Fp8ScalesByBlockParams &p) {
  int64_t row = block.x;
  for (int64_t g = KILN_THREAD; g < p.groups; g += KILN_THREADS)
    p.out[g * p.stride + row] = p.scales[row * p.groups + g];
}
KILN_KERNEL(kiln_fp8_scales_by_block, Fp8ScalesByBlockParams)

KILN_KERNELS_END

#endif // KILN_KERNELS_MATMUL_H
