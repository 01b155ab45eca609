// The CUDA executor's GEMMs, out = x W^T (+ bias), for f32 activations and
// f32 / bf16 / f16 / FP8 e4m3 (block-scaled) weights stored [out, in]: as
// cpu::linear (kiln_linear_*, also the output head), cpu::headLinear
// (kiln_head_linear_*: one matrix per head, grid.z) and cpu::groupedLinear
// (kiln_grouped_linear_*: rows grouped by expert through device-side
// offsets, so no count reaches the host and the launch can be captured in a
// CUDA graph). The host builds are tested against the CPU kernels in
// tests/runtime/DeviceGemmTest.cpp.
//
// Built for decode, where a GEMM is bound by streaming its weights: a block
// owns kLinearTileM activation rows and kLinearTileN weight rows and reads
// each of those weight rows once, 16 bytes per load, applying every load to
// all its activation rows. The activation rows go through shared memory in
// stages of K; each warp owns kLinearTileN / warps weight rows, its lanes
// stride over the stage, and a warp shuffle sums the lanes at the end. Fewer
// rows than the tile take a narrower instantiation (1, 2, 4 or 8 rows), so a
// batch of one spends no arithmetic on empty rows. Weights whose rows are
// not 16-byte aligned (or FP8 blocks not a multiple of 16 columns) take the
// same loops one element at a time.
//
// FP8: kiln_quantize_activations first quantizes the activations as the CPU
// FP8 GEMMs do (per row, per blockCols columns, s = max(amax, 1e-4) / 448,
// a power of two when ue8m0, codes e4m3(x / s)) into codes and scales; the
// GEMM multiplies the decoded codes (their products are exact in fp32) and
// scales each lane's partial sum within one K block by s_x * s_w.
#ifndef KILN_KERNELS_GEMM_H
#define KILN_KERNELS_GEMM_H

#include "Fp8.h"
#include "FusedPrelude.h"

namespace kiln {

// The host build runs a block as one thread, which then plays the one lane
// of the one warp that owns all of the block's weight rows.
#if defined(__CUDACC__)
constexpr int kLinearLanes = 32;
constexpr int kLinearWarps = KILN_BLOCK_THREADS / 32;
#define KILN_LINEAR_UNROLL(n) _Pragma(#n)
#else
constexpr int kLinearLanes = 1;
constexpr int kLinearWarps = 1;
#define KILN_LINEAR_UNROLL(n)
#endif

/// Activation rows per block.
constexpr int kLinearTileM = 8;
/// Weight rows (outputs) per block.
constexpr int kLinearTileN = 16;
constexpr int kLinearWarpRows = kLinearTileN / kLinearWarps;
static_assert(kLinearTileN % kLinearWarps == 0, "whole weight rows per warp");
/// Activations staged in shared memory (32 KiB): kLinearStage / rows
/// columns of each row, so one row takes K up to 8192 in one stage.
constexpr int kLinearStage = 8192;

enum LinearBias {
  LinearNoBias = 0,
  LinearBiasF32 = 1,
  LinearBiasBf16 = 2,
  LinearBiasF16 = 3
};

/// The one parameter of every kernel here. Activations and outputs are rows
/// of `heads` vectors: x [rows, heads, k], out [rows, heads, n], with heads
/// = 1 except for head GEMMs; weights are [matrices, n, k].
struct LinearParams {
  const float *x; // non-FP8 weights: the activations
  /// FP8 weights: kiln_quantize_activations' codes [rows, heads, k] and
  /// scales [rows, heads, ceil(k / blockCols)] (x is not read).
  const unsigned char *xCodes;
  const float *xScales;
  const void *w;
  /// FP8: [matrices, ceil(n / blockRows), ceil(k / blockCols)].
  const float *wScales;
  const void *bias; // kiln_linear_* only: [n] of biasType, or null
  int biasType;     // LinearBias
  float *out;
  /// kiln_linear_* and kiln_head_linear_*: the rows; grouped GEMMs count
  /// theirs on the device (offsets[experts]) and do not read it.
  int64_t rows;
  int64_t n, k;
  int64_t heads; // kiln_head_linear_* only (= grid.z)
  int64_t blockRows, blockCols; // FP8 only
  /// Grouped GEMMs: rows [offsets[e], offsets[e + 1]) use matrix e.
  const int32_t *offsets;
  int64_t experts;
};

inline int linearCeil(int64_t a, int64_t b) {
  return static_cast<int>((a + b - 1) / b);
}

inline Dim3 linearGrid(int64_t rows, int64_t n) {
  return {linearCeil(n, kLinearTileN), linearCeil(rows, kLinearTileM), 1};
}
inline Dim3 headLinearGrid(int64_t rows, int64_t heads, int64_t n) {
  return {linearCeil(n, kLinearTileN), linearCeil(rows, kLinearTileM),
          static_cast<int>(heads)};
}
/// `routedRows`: a bound on offsets[experts] (blocks past the actual count
/// return at once).
inline Dim3 groupedLinearGrid(int64_t routedRows, int64_t n) {
  return linearGrid(routedRows, n);
}

//===----------------------------------------------------------------------===//
// Weight loads
//===----------------------------------------------------------------------===//

/// Weight elements per 16-byte load.
template <class W>
constexpr int kLinearVector = 16 / static_cast<int>(sizeof(W));
template <class W> constexpr bool kLinearFp8 = sizeof(W) == 1;

struct LinearWords {
  uint32_t w[4];
};

/// 16 bytes of weights, streamed past L1 (each is read once per block).
KILN_FN LinearWords loadLinearWords(const void *p) {
  LinearWords q;
#if defined(__CUDACC__)
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(q.w[0]), "=r"(q.w[1]), "=r"(q.w[2]), "=r"(q.w[3])
      : "l"(p));
#else
  __builtin_memcpy(&q, p, sizeof(q));
#endif
  return q;
}

KILN_FN float halfBitsToFloat(uint32_t bits) {
#if defined(__CUDACC__)
  float value;
  asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(static_cast<uint16_t>(bits)));
  return value;
#else
  return toFloat(F16{static_cast<uint16_t>(bits)});
#endif
}

/// Two e4m3 codes (the low byte first) to fp32, exactly; NaN codes to NaN.
KILN_FN void decodeE4m3Pair(uint32_t pair, float *v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("{\n .reg .b32 h;\n .reg .b16 lo, hi;\n"
      " cvt.rn.f16x2.e4m3x2 h, %2;\n mov.b32 {lo, hi}, h;\n"
      " cvt.f32.f16 %0, lo;\n cvt.f32.f16 %1, hi;\n}"
      : "=f"(v[0]), "=f"(v[1])
      : "h"(static_cast<uint16_t>(pair)));
#else
  v[0] = decodeE4m3(static_cast<unsigned char>(pair));
  v[1] = decodeE4m3(static_cast<unsigned char>(pair >> 8));
#endif
}

KILN_FN void unpackLinear(const LinearWords &q, const float *, float *v) {
  for (int i = 0; i < 4; ++i)
    v[i] = floatFromBits(q.w[i]);
}
KILN_FN void unpackLinear(const LinearWords &q, const Bf16 *, float *v) {
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = floatFromBits(q.w[i] << 16);
    v[2 * i + 1] = floatFromBits(q.w[i] & 0xffff0000u);
  }
}
KILN_FN void unpackLinear(const LinearWords &q, const F16 *, float *v) {
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = halfBitsToFloat(q.w[i] & 0xffffu);
    v[2 * i + 1] = halfBitsToFloat(q.w[i] >> 16);
  }
}
KILN_FN void unpackLinear(const LinearWords &q, const unsigned char *,
                          float *v) {
  for (int i = 0; i < 4; ++i) {
    decodeE4m3Pair(q.w[i] & 0xffffu, v + 4 * i);
    decodeE4m3Pair(q.w[i] >> 16, v + 4 * i + 2);
  }
}

KILN_FN float loadLinearOne(const float *p) { return *p; }
KILN_FN float loadLinearOne(const Bf16 *p) { return toFloat(*p); }
KILN_FN float loadLinearOne(const F16 *p) { return toFloat(*p); }
KILN_FN float loadLinearOne(const unsigned char *p) { return decodeE4m3(*p); }

/// V weights from p: one 16-byte load, or V = 1 element.
template <int V, class W> KILN_FN void loadLinear(const W *p, float *v) {
  if constexpr (V == 1)
    v[0] = loadLinearOne(p);
  else
    unpackLinear(loadLinearWords(p), p, v);
}

/// Whether a matrix's rows take 16-byte loads: rows (and so matrices) start
/// on 16 bytes, and for FP8 each load stays in one K block of scales.
template <class W> KILN_FN bool linearVectorized(const LinearParams &p) {
  bool aligned =
      (p.k * static_cast<int64_t>(sizeof(W))) % 16 == 0 &&
      reinterpret_cast<unsigned long long>(p.w) % 16 == 0;
  return aligned && (!kLinearFp8<W> || p.blockCols % kLinearVector<W> == 0);
}

KILN_FN float linearBias(const LinearParams &p, int64_t n) {
  switch (p.biasType) {
  case LinearBiasF32:
    return static_cast<const float *>(p.bias)[n];
  case LinearBiasBf16:
    return toFloat(static_cast<const Bf16 *>(p.bias)[n]);
  case LinearBiasF16:
    return toFloat(static_cast<const F16 *>(p.bias)[n]);
  default:
    return 0.0f;
  }
}

/// The sum (max) over the lanes of a warp, returned to all of them.
KILN_FN float linearLaneSum(float value) {
#if defined(__CUDACC__)
  for (int offset = 16; offset > 0; offset >>= 1)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
#endif
  return value;
}
KILN_FN float linearLaneMax(float value) {
#if defined(__CUDACC__)
  for (int offset = 16; offset > 0; offset >>= 1)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
#endif
  return value;
}

//===----------------------------------------------------------------------===//
// The tile
//===----------------------------------------------------------------------===//

/// The work of one block: activation rows row0 .. row0 + count - 1 (count
/// <= kLinearTileM) of head `head` times outputs n0 .. n0 + kLinearTileN - 1
/// of weight matrix `matrix`.
struct LinearTile {
  int64_t row0;
  int count;
  int64_t matrix, heads, head, n0;
};

/// Where stage column c lives: for V-wide loads, the j-th 4 columns of
/// every load lie in plane j, so that the lanes of a warp read consecutive
/// 16 bytes of shared memory (no bank conflicts).
template <int V, int Columns> KILN_FN int stageColumn(int c) {
  if constexpr (V == 1)
    return c;
  else
    return ((c % V) / 4 * (Columns / V) + c / V) * 4 + c % 4;
}

/// The V stage values of vector v of row m.
template <int V, int Columns>
KILN_FN void readStage(const float *stage, int m, int v, float *x) {
  const float *row = stage + m * Columns;
  if constexpr (V == 1) {
    x[0] = row[v];
  } else {
    for (int j = 0; j < V / 4; ++j) {
      const float *at = row + (j * (Columns / V) + v) * 4;
#if defined(__CUDACC__)
      float4 q = *reinterpret_cast<const float4 *>(at);
      x[4 * j] = q.x;
      x[4 * j + 1] = q.y;
      x[4 * j + 2] = q.z;
      x[4 * j + 3] = q.w;
#else
      for (int i = 0; i < 4; ++i)
        x[4 * j + i] = at[i];
#endif
    }
  }
}

/// Copies columns [k0, k0 + len) of the MT rows to the stage (FP8: decoded
/// codes); rows past the tile's count are zero.
template <class W, int MT, int V>
KILN_FN void fillStage(const LinearParams &p, const LinearTile &t,
                       const int64_t *xRow, int64_t k0, int len,
                       float *stage) {
  constexpr int kColumns = kLinearStage / MT;
  for (int m = 0; m < MT; ++m) {
    float *row = stage + m * kColumns;
    if (m >= t.count) {
      for (int c = KILN_THREAD; c < len; c += KILN_THREADS)
        row[stageColumn<V, kColumns>(c)] = 0.0f;
    } else if constexpr (kLinearFp8<W>) {
      const unsigned char *codes = p.xCodes + xRow[m] * p.k + k0;
      for (int c = KILN_THREAD; c < len; c += KILN_THREADS)
        row[stageColumn<V, kColumns>(c)] = decodeE4m3(codes[c]);
    } else {
      const float *x = p.x + xRow[m] * p.k + k0;
      for (int c = KILN_THREAD; c < len; c += KILN_THREADS)
        row[stageColumn<V, kColumns>(c)] = x[c];
    }
  }
}

/// One tile of MT (>= t.count) activation rows with V-wide weight loads.
/// All threads of the block call it (it syncs).
template <class W, int MT, int V>
KILN_FN void linearTile(const LinearParams &p, const LinearTile &t,
                        float *stage) {
  constexpr int R = kLinearWarpRows;
  constexpr int kColumns = kLinearStage / MT;
  const int lane = KILN_THREAD % kLinearLanes;
  const int warp = KILN_THREAD / kLinearLanes;
  const int64_t kBlocks = kLinearFp8<W> ? (p.k + p.blockCols - 1) / p.blockCols
                                         : 1;
  const int64_t nBlocks = kLinearFp8<W> ? (p.n + p.blockRows - 1) / p.blockRows
                                         : 1;
  // Outputs past n read row n - 1 and write nothing; rows past the count
  // index the last row (their stage rows are zero).
  const W *w[R];
  const float *wScale[R];
  for (int r = 0; r < R; ++r) {
    int64_t n = t.n0 + warp * R + r;
    n = n < p.n ? n : p.n - 1;
    w[r] = static_cast<const W *>(p.w) + (t.matrix * p.n + n) * p.k;
    wScale[r] = nullptr;
    if constexpr (kLinearFp8<W>)
      wScale[r] = p.wScales + (t.matrix * nBlocks + n / p.blockRows) * kBlocks;
  }
  int64_t xRow[MT];
  for (int m = 0; m < MT; ++m)
    xRow[m] = (t.row0 + (m < t.count ? m : t.count - 1)) * t.heads + t.head;

  float acc[R][MT];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m)
      acc[r][m] = 0.0f;
  for (int64_t k0 = 0; k0 < p.k; k0 += kColumns) {
    int len = static_cast<int>(p.k - k0 < kColumns ? p.k - k0 : kColumns);
    KILN_SYNC(); // the previous stage (or tile) is consumed
    fillStage<W, MT, V>(p, t, xRow, k0, len, stage);
    KILN_SYNC();
    KILN_LINEAR_UNROLL(unroll 2)
    for (int v = lane; v < len / V; v += kLinearLanes) {
      int64_t k = k0 + int64_t{v} * V;
      float wv[R][V];
      for (int r = 0; r < R; ++r)
        loadLinear<V>(w[r] + k, wv[r]);
      if constexpr (kLinearFp8<W>) {
        // A V-wide load lies in one K block; its partial sums of exact code
        // products take the block's scales, as the CPU's block sums do.
        int64_t kb = k / p.blockCols;
        float sw[R];
        for (int r = 0; r < R; ++r)
          sw[r] = wScale[r][kb];
        for (int m = 0; m < MT; ++m) {
          float x[V];
          readStage<V, kColumns>(stage, m, v, x);
          float sx = p.xScales[xRow[m] * kBlocks + kb];
          for (int r = 0; r < R; ++r) {
            float part = 0.0f;
            for (int i = 0; i < V; ++i)
              part += x[i] * wv[r][i];
            acc[r][m] += part * (sx * sw[r]);
          }
        }
      } else {
        for (int m = 0; m < MT; ++m) {
          float x[V];
          readStage<V, kColumns>(stage, m, v, x);
          for (int r = 0; r < R; ++r)
            for (int i = 0; i < V; ++i)
              acc[r][m] += x[i] * wv[r][i];
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    int64_t n = t.n0 + warp * R + r;
    for (int m = 0; m < MT; ++m) {
      if (m >= t.count)
        break; // warp-uniform
      float total = linearLaneSum(acc[r][m]);
      if (n < p.n && lane == (r * MT + m) % kLinearLanes)
        p.out[xRow[m] * p.n + n] = total + linearBias(p, n);
    }
  }
}

template <class W, int MT>
KILN_FN void linearTileOf(const LinearParams &p, const LinearTile &t,
                          float *stage) {
  if (linearVectorized<W>(p))
    linearTile<W, MT, kLinearVector<W>>(p, t, stage);
  else
    linearTile<W, MT, 1>(p, t, stage);
}

/// The tile in the narrowest instantiation that holds its rows.
template <class W>
KILN_FN void linearRows(const LinearParams &p, const LinearTile &t,
                        float *stage) {
  if (t.count <= 1)
    linearTileOf<W, 1>(p, t, stage);
  else if (t.count <= 2)
    linearTileOf<W, 2>(p, t, stage);
  else if (t.count <= 4)
    linearTileOf<W, 4>(p, t, stage);
  else
    linearTileOf<W, 8>(p, t, stage);
}

//===----------------------------------------------------------------------===//
// Kernels
//===----------------------------------------------------------------------===//

/// kiln_linear_* (head = matrix = 0, heads = 1) and kiln_head_linear_*.
template <class W, bool PerHead>
KILN_FN void linearBlock(Dim3 block, const LinearParams &p) {
  KILN_SHARED alignas(16) float stage[kLinearStage];
  int64_t row0 = int64_t{block.y} * kLinearTileM;
  if (row0 >= p.rows)
    return; // block-uniform
  int64_t rest = p.rows - row0;
  LinearTile t{row0,
               static_cast<int>(rest < kLinearTileM ? rest : kLinearTileM),
               PerHead ? block.z : 0,
               PerHead ? p.heads : 1,
               PerHead ? block.z : 0,
               int64_t{block.x} * kLinearTileN};
  linearRows<W>(p, t, stage);
}

/// The expert of routed row `row`: the last e with offsets[e] <= row, so
/// that empty experts before it are passed over.
KILN_FN int64_t linearExpertOf(const int32_t *offsets, int64_t experts,
                               int64_t row) {
  int64_t lo = 0, hi = experts - 1;
  while (lo < hi) {
    int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

/// Block y owns routed rows [8y, 8y + 8) and runs one tile per expert among
/// them, so an expert's rows share its weight loads and empty experts cost
/// nothing.
template <class W>
KILN_FN void groupedLinearBlock(Dim3 block, const LinearParams &p) {
  KILN_SHARED alignas(16) float stage[kLinearStage];
  int64_t total = p.offsets[p.experts];
  int64_t row = int64_t{block.y} * kLinearTileM;
  int64_t end = row + kLinearTileM < total ? row + kLinearTileM : total;
  while (row < end) { // block-uniform
    int64_t e = linearExpertOf(p.offsets, p.experts, row);
    int64_t next = p.offsets[e + 1] < end ? p.offsets[e + 1] : end;
    if (next <= row)
      break; // unsorted offsets
    LinearTile t{row, static_cast<int>(next - row), e, 1, 0,
                 int64_t{block.x} * kLinearTileN};
    linearRows<W>(p, t, stage);
    row = next;
  }
}

#define KILN_LINEAR_KERNELS(suffix, W)                                         \
  KILN_FN void kiln_linear_##suffix##_block(Dim3 block,                        \
                                            const LinearParams &p) {           \
    linearBlock<W, false>(block, p);                                           \
  }                                                                            \
  KILN_KERNEL(kiln_linear_##suffix, LinearParams)                              \
  KILN_FN void kiln_head_linear_##suffix##_block(Dim3 block,                   \
                                                 const LinearParams &p) {      \
    linearBlock<W, true>(block, p);                                            \
  }                                                                            \
  KILN_KERNEL(kiln_head_linear_##suffix, LinearParams)                         \
  KILN_FN void kiln_grouped_linear_##suffix##_block(Dim3 block,                \
                                                    const LinearParams &p) {   \
    groupedLinearBlock<W>(block, p);                                           \
  }                                                                            \
  KILN_KERNEL(kiln_grouped_linear_##suffix, LinearParams)
KILN_LINEAR_KERNELS(f32, float)
KILN_LINEAR_KERNELS(bf16, Bf16)
KILN_LINEAR_KERNELS(f16, F16)
KILN_LINEAR_KERNELS(fp8, unsigned char)
#undef KILN_LINEAR_KERNELS

//===----------------------------------------------------------------------===//
// FP8 activation quantization
//===----------------------------------------------------------------------===//

/// Quantizes rows of k activations for the FP8 GEMMs (x [rows, k] -> codes
/// [rows, k], scales [rows, ceil(k / blockCols)]); a head GEMM's x [rows,
/// heads, k] is rows * heads rows of k. One block per row.
struct QuantizeActivationsParams {
  const float *x;
  unsigned char *codes;
  float *scales;
  /// Null, or the number of rows on the device (grouped GEMMs:
  /// offsets + experts); blocks past it return.
  const int32_t *rowCount;
  int64_t k, blockCols;
  int pow2; // ue8m0 scales
};

inline Dim3 quantizeActivationsGrid(int64_t rows) {
  return {static_cast<int>(rows), 1, 1};
}
/// Scratch of the FP8 GEMMs over `rows` rows of k.
inline int64_t quantizedCodesBytes(int64_t rows, int64_t k) { return rows * k; }
inline int64_t quantizedScaleFloats(int64_t rows, int64_t k,
                                    int64_t blockCols) {
  return rows * ((k + blockCols - 1) / blockCols);
}

/// max(amax, 1e-4) / 448, rounded up to a power of two for ue8m0: as the
/// CPU's activationScale (s is positive and normal).
KILN_FN float linearActivationScale(float amax, bool pow2) {
  float s = fmaxf(amax, 1e-4f) / 448.0f;
  if (!pow2)
    return s;
  uint32_t bits = bitsFromFloat(s);
  if (bits & 0x7fffffu)
    bits = (bits + 0x800000u) & 0xff800000u;
  return floatFromBits(bits);
}

/// Each warp quantizes whole K blocks; its lanes stride over the block.
KILN_FN void kiln_quantize_activations_block(Dim3 block,
                                             const QuantizeActivationsParams &p) {
  int64_t row = block.x;
  if (p.rowCount && row >= *p.rowCount)
    return;
  const int lane = KILN_THREAD % kLinearLanes;
  const int warp = KILN_THREAD / kLinearLanes;
  const float *x = p.x + row * p.k;
  unsigned char *codes = p.codes + row * p.k;
  int64_t kBlocks = (p.k + p.blockCols - 1) / p.blockCols;
  for (int64_t b = warp; b < kBlocks; b += kLinearWarps) {
    int64_t c0 = b * p.blockCols;
    int64_t c1 = c0 + p.blockCols < p.k ? c0 + p.blockCols : p.k;
    float amax = 0.0f;
    for (int64_t c = c0 + lane; c < c1; c += kLinearLanes)
      amax = fmaxf(amax, fabsf(x[c]));
    float s = linearActivationScale(linearLaneMax(amax), p.pow2 != 0);
    for (int64_t c = c0 + lane; c < c1; c += kLinearLanes)
      codes[c] = encodeE4m3(x[c] / s);
    if (lane == 0)
      p.scales[row * kBlocks + b] = s;
  }
}
KILN_KERNEL(kiln_quantize_activations, QuantizeActivationsParams)

} // namespace kiln

#endif // KILN_KERNELS_GEMM_H
