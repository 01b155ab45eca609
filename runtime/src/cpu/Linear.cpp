// linear and groupedLinear: y = x w^T (+ bias) with w [out, in] stored in
// fp32, bf16 or f16, converted to fp32 in registers as it is read; or in FP8
// e4m3fn with block scales, multiplied by activations quantized to e4m3 (see
// the FP8 section below).
//
// The work is split over output features (each thread owns a contiguous
// range of weight rows, so every weight byte is read from memory once), and
// within a range into tiles of R input rows x O output features whose R * O
// dot products run together: each loaded weight vector is used R times and
// each loaded input vector O times. Decode (few rows) is bound by the weight
// stream; prefill blocks the outputs so that a block of weight rows stays in
// L2 while every tile of input rows passes over it. With the vector kernels,
// matrices of many rows go to a packed GEMM instead (see its section).
//
// Two implementations of the tile: AVX2 + FMA + F16C intrinsics (chosen at
// run time when the CPU has them; AVX-512VL entries of the same code use its
// 32 registers for larger tiles) and a portable one the compiler vectorizes
// with the baseline instruction set.
#include "runtime/src/cpu/Kernels.h"

#include "kiln/Float.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <immintrin.h>
#include <omp.h>
#include <utility>
#include <vector>

namespace kiln::cpu {
namespace {

template <ElementType E> struct StorageOf { using type = uint16_t; };
template <> struct StorageOf<ElementType::F32> { using type = float; };
template <ElementType E> using Storage = typename StorageOf<E>::type;

/// Branch-free f16 -> f32 (exact, like kiln::f16ToFloat) so that loops over
/// it vectorize: the exponent and mantissa land in an f32 and a multiply by
/// 2^112 rebiases normals and subnormals alike; infinities and NaNs keep
/// their payload.
inline float halfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t magnitude = static_cast<uint32_t>(h & 0x7fffu) << 13;
  float scaled = std::bit_cast<float>(magnitude) * 0x1p112f;
  uint32_t bits = magnitude >= (0x7c00u << 13)
                      ? (magnitude | 0x7f800000u)
                      : std::bit_cast<uint32_t>(scaled);
  return std::bit_cast<float>(bits | sign);
}

template <ElementType E> inline float toFloat(Storage<E> v) {
  if constexpr (E == ElementType::F32)
    return v;
  else if constexpr (E == ElementType::BF16)
    return bf16ToFloat(v);
  else
    return halfToFloat(v);
}

[[noreturn]] void unsupportedType(const char *kernel, ElementType type) {
  std::fprintf(stderr, "kiln: %s: unsupported weight type %d\n", kernel,
               static_cast<int>(type));
  std::abort();
}

//===----------------------------------------------------------------------===//
// Portable tile
//===----------------------------------------------------------------------===//

template <ElementType E, int R, int O>
void tileGeneric(const float *x, int64_t ldx, const Storage<E> *w, int64_t ldw,
                 int64_t in, float *sums) {
  constexpr int L = 8; // independent lanes per dot product
  float acc[R][O][L] = {};
  int64_t i = 0;
  for (; i + L <= in; i += L) {
    float wv[O][L];
    for (int o = 0; o < O; ++o)
      for (int l = 0; l < L; ++l)
        wv[o][l] = toFloat<E>(w[o * ldw + i + l]);
    for (int r = 0; r < R; ++r)
      for (int o = 0; o < O; ++o)
        for (int l = 0; l < L; ++l)
          acc[r][o][l] += x[r * ldx + i + l] * wv[o][l];
  }
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < O; ++o) {
      float s = 0;
      for (int l = 0; l < L; ++l)
        s += acc[r][o][l];
      for (int64_t t = i; t < in; ++t)
        s += x[r * ldx + t] * toFloat<E>(w[o * ldw + t]);
      sums[r * O + o] = s;
    }
}

//===----------------------------------------------------------------------===//
// AVX2 tile
//===----------------------------------------------------------------------===//

#define KILN_AVX2 __attribute__((target("avx2,fma,f16c")))

template <ElementType E> KILN_AVX2 inline __m256 load8(const Storage<E> *p) {
  if constexpr (E == ElementType::F32) {
    return _mm256_loadu_ps(p);
  } else if constexpr (E == ElementType::BF16) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
  }
}

KILN_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/// The AVX2 tile, inlined into entry points for AVX2 and for AVX-512VL,
/// whose 32 vector registers hold the accumulators of 8-row tiles.
template <ElementType E, int R, int O>
KILN_AVX2 [[gnu::always_inline]] inline void
tileAvx2Body(const float *x, int64_t ldx, const Storage<E> *w, int64_t ldw,
             int64_t in, float *sums) {
  // A single row gets two accumulators per output to hide the FMA latency.
  constexpr int U = R == 1 ? 2 : 1;
  __m256 acc[R][O][U];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int o = 0; o < O; ++o)
#pragma GCC unroll 2
      for (int u = 0; u < U; ++u)
        acc[r][o][u] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 * U <= in; i += 8 * U) {
#pragma GCC unroll 2
    for (int u = 0; u < U; ++u) {
      __m256 wv[O];
#pragma GCC unroll 4
      for (int o = 0; o < O; ++o)
        wv[o] = load8<E>(w + o * ldw + i + 8 * u);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256 xv = _mm256_loadu_ps(x + r * ldx + i + 8 * u);
#pragma GCC unroll 4
        for (int o = 0; o < O; ++o)
          acc[r][o][u] = _mm256_fmadd_ps(xv, wv[o], acc[r][o][u]);
      }
    }
  }
  for (; i + 8 <= in; i += 8) {
    __m256 wv[O];
#pragma GCC unroll 4
    for (int o = 0; o < O; ++o)
      wv[o] = load8<E>(w + o * ldw + i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m256 xv = _mm256_loadu_ps(x + r * ldx + i);
#pragma GCC unroll 4
      for (int o = 0; o < O; ++o)
        acc[r][o][0] = _mm256_fmadd_ps(xv, wv[o], acc[r][o][0]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int o = 0; o < O; ++o) {
      __m256 v = acc[r][o][0];
      for (int u = 1; u < U; ++u)
        v = _mm256_add_ps(v, acc[r][o][u]);
      float s = hsum(v);
      for (int64_t t = i; t < in; ++t)
        s += x[r * ldx + t] * toFloat<E>(w[o * ldw + t]);
      sums[r * O + o] = s;
    }
}

template <ElementType E, int R, int O>
KILN_AVX2 void tileAvx2(const float *x, int64_t ldx, const Storage<E> *w,
                        int64_t ldw, int64_t in, float *sums) {
  tileAvx2Body<E, R, O>(x, ldx, w, ldw, in, sums);
}

template <ElementType E, int R, int O>
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl"))) void
tileAvx512(const float *x, int64_t ldx, const Storage<E> *w, int64_t ldw,
           int64_t in, float *sums) {
  tileAvx2Body<E, R, O>(x, ldx, w, ldw, in, sums);
}

//===----------------------------------------------------------------------===//
// Driver
//===----------------------------------------------------------------------===//

using TileFn = void (*)(const float *, int64_t, const void *, int64_t, int64_t,
                        float *);

enum class Isa { Portable, Avx2, Avx512 };

template <ElementType E, Isa I, int R, int O>
void tileThunk(const float *x, int64_t ldx, const void *w, int64_t ldw,
               int64_t in, float *sums) {
  auto *wt = static_cast<const Storage<E> *>(w);
  if constexpr (I == Isa::Avx512)
    tileAvx512<E, R, O>(x, ldx, wt, ldw, in, sums);
  else if constexpr (I == Isa::Avx2)
    tileAvx2<E, R, O>(x, ldx, wt, ldw, in, sums);
  else
    tileGeneric<E, R, O>(x, ldx, wt, ldw, in, sums);
}

constexpr int kMaxR = 8, kMaxO = 4;

/// Rows per tile: as many as the accumulators of 3 outputs fit in the vector
/// registers (16, or 32 with AVX-512), so that each weight vector is loaded
/// once per that many rows.
constexpr int maxRows(Isa isa) { return isa == Isa::Avx512 ? 8 : 4; }

/// Tile functions for R = 1..maxRows rows and O = 1..4 outputs (1..3 beyond
/// 4 rows, whose 4-output accumulators would not fit in 32 registers).
struct TileTable {
  int maxRows = 0;
  TileFn fn[kMaxR + 1][kMaxO + 1] = {};
};

template <ElementType E, Isa I> constexpr TileTable makeTable() {
  TileTable t;
  t.maxRows = maxRows(I);
  [&]<int... Rs>(std::integer_sequence<int, Rs...>) {
    (
        [&]<int R>() {
          t.fn[R][1] = &tileThunk<E, I, R, 1>;
          t.fn[R][2] = &tileThunk<E, I, R, 2>;
          t.fn[R][3] = &tileThunk<E, I, R, 3>;
          if constexpr (R <= 4)
            t.fn[R][4] = &tileThunk<E, I, R, 4>;
        }.template operator()<Rs + 1>(),
        ...);
  }
  (std::make_integer_sequence<int, maxRows(I)>{});
  return t;
}

template <ElementType E> const TileTable &tileTable() {
  static const TileTable generic = makeTable<E, Isa::Portable>();
  static const TileTable avx2 = makeTable<E, Isa::Avx2>();
  static const TileTable avx512 = makeTable<E, Isa::Avx512>();
  if (!vectorKernelsActive())
    return generic;
  return avx512KernelsActive() ? avx512 : avx2;
}

const TileTable &tileTableFor(ElementType type) {
  switch (type) {
  case ElementType::BF16:
    return tileTable<ElementType::BF16>();
  case ElementType::F16:
    return tileTable<ElementType::F16>();
  case ElementType::F32:
    return tileTable<ElementType::F32>();
  default:
    unsupportedType("linear", type);
  }
}

/// Computes outputs [oBegin, oEnd) of all rows: rows in tiles of up to
/// table.maxRows, outputs in tiles of up to `oTile`. `w` points at weight
/// row 0.
void linearRange(const TileTable &table, const float *x, int64_t rows,
                 int64_t in, const char *w, int64_t rowBytes, int64_t oBegin,
                 int64_t oEnd, int oTile, Weight bias, int64_t ldy, float *y) {
  float sums[kMaxR * kMaxO];
  // Tiles of more than 4 rows (AVX-512) only for decode: over more rows,
  // the rows of a tile 4 KiB apart (in = 2048) would contend for L1 sets.
  int tileRows = rows <= table.maxRows ? table.maxRows : 4;
  for (int64_t r0 = 0; r0 < rows; r0 += tileRows) {
    int R = static_cast<int>(std::min<int64_t>(tileRows, rows - r0));
    // 4 x 4 accumulators would spill the 16 vector registers.
    int tile = R >= 4 ? std::min(oTile, 3) : oTile;
    for (int64_t o0 = oBegin; o0 < oEnd; o0 += tile) {
      int O = static_cast<int>(std::min<int64_t>(tile, oEnd - o0));
      table.fn[R][O](x + r0 * in, in, w + o0 * rowBytes, in, in, sums);
      for (int r = 0; r < R; ++r)
        for (int o = 0; o < O; ++o) {
          float b = bias.data ? loadWeight(bias, o0 + o) : 0.0f;
          y[(r0 + r) * ldy + o0 + o] = sums[r * O + o] + b;
        }
    }
  }
}

//===----------------------------------------------------------------------===//
// Packed GEMM (many rows)
//===----------------------------------------------------------------------===//
//
// Prefill multiplies the same weights by many rows, so it is organized like
// a BLAS GEMM instead: for each chunk of kGemmK input columns, a block of
// kGemmBlock weight rows is converted to fp32 and transposed once into
// panels of kGemmN outputs x kGemmK ([k][n], in L2); a micro-kernel then
// keeps an MR x 16 tile of outputs in registers and, per k, loads two
// vectors of the panel and broadcasts one activation per row: 2 + MR loads
// per 2 * MR FMAs, with no conversion or horizontal sum in the loop. The
// MR rows of activations are first copied to a buffer whose row stride is not
// a multiple of 4 KiB, which would map them to the same L1 sets.

constexpr int kGemmN = 16;
constexpr int64_t kGemmK = 256;
/// Outputs per block (256 KiB of panels): every block reads all rows of
/// activations again, from L3 at prefill sizes, so wider blocks pay (64
/// outputs ran 1024 x 2048 x 10944 30% slower than 128, 256 a few % faster).
constexpr int64_t kGemmBlock = 256;
constexpr int kGemmMaxMR = 12;
constexpr int64_t kGemmLda = kGemmK + 16;
/// Fewer rows than this do not pay for the packing (measured on V2-Lite
/// expert shapes: break-even around 32-48 rows).
constexpr int64_t kGemmMinRows = 40;

/// Rows per micro-tile: the 2 * MR accumulators, 2 panel vectors and a
/// broadcast fill 16 registers, or 28 of the 32 with AVX-512VL.
constexpr int gemmRows(Isa isa) { return isa == Isa::Avx512 ? 12 : 6; }

/// Packs weight rows [0, n) (n <= 16) of `w`, columns [0, kc), into dst
/// [kc][16] as fp32; rows past n are zero.
template <ElementType E>
KILN_AVX2 void packPanel(const Storage<E> *w, int64_t ldw, int64_t n,
                         int64_t kc, float *dst) {
  for (int h = 0; h < kGemmN; h += 8) {
    const Storage<E> *src = w + h * ldw;
    int64_t k = 0;
    if (n - h >= 8) {
      for (; k + 8 <= kc; k += 8) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j)
          r[j] = load8<E>(src + j * ldw + k);
        // 8 x 8 transpose: row j of the result is column j of r.
        __m256 t[8], u[8];
        for (int j = 0; j < 8; j += 2) {
          t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
          t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
        }
        for (int j = 0; j < 8; j += 4) {
          u[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);
          u[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xee);
          u[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
          u[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xee);
        }
        for (int j = 0; j < 4; ++j) {
          _mm256_storeu_ps(dst + (k + j) * kGemmN + h,
                           _mm256_permute2f128_ps(u[j], u[j + 4], 0x20));
          _mm256_storeu_ps(dst + (k + j + 4) * kGemmN + h,
                           _mm256_permute2f128_ps(u[j], u[j + 4], 0x31));
        }
      }
    }
    for (; k < kc; ++k)
      for (int j = 0; j < 8; ++j)
        dst[k * kGemmN + h + j] =
            h + j < n ? toFloat<E>(src[j * ldw + k]) : 0.0f;
  }
}

/// C[MR x cols] (cols <= 16) = (accumulate ? C : 0) + A[MR x kc] B[kc x 16].
template <int MR>
KILN_AVX2 [[gnu::always_inline]] inline void
gemmTileBody(const float *a, const float *b, int64_t kc, float *c, int64_t ldc,
             int cols, bool accumulate) {
  __m256 acc[MR][2];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
    acc[m][0] = acc[m][1] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_loadu_ps(b + k * kGemmN);
    __m256 b1 = _mm256_loadu_ps(b + k * kGemmN + 8);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      __m256 av = _mm256_broadcast_ss(a + m * kGemmLda + k);
      acc[m][0] = _mm256_fmadd_ps(av, b0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(av, b1, acc[m][1]);
    }
  }
  if (cols == kGemmN) {
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      float *p = c + m * ldc;
      if (accumulate) {
        acc[m][0] = _mm256_add_ps(acc[m][0], _mm256_loadu_ps(p));
        acc[m][1] = _mm256_add_ps(acc[m][1], _mm256_loadu_ps(p + 8));
      }
      _mm256_storeu_ps(p, acc[m][0]);
      _mm256_storeu_ps(p + 8, acc[m][1]);
    }
    return;
  }
  float tmp[kGemmN];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
    _mm256_storeu_ps(tmp, acc[m][0]);
    _mm256_storeu_ps(tmp + 8, acc[m][1]);
    float *p = c + m * ldc;
    for (int j = 0; j < cols; ++j)
      p[j] = (accumulate ? p[j] : 0.0f) + tmp[j];
  }
}

using GemmTileFn = void (*)(const float *, const float *, int64_t, float *,
                            int64_t, int, bool);

template <int MR>
KILN_AVX2 void gemmTileAvx2(const float *a, const float *b, int64_t kc,
                            float *c, int64_t ldc, int cols, bool accumulate) {
  gemmTileBody<MR>(a, b, kc, c, ldc, cols, accumulate);
}

template <int MR>
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl"))) void
gemmTileAvx512(const float *a, const float *b, int64_t kc, float *c,
               int64_t ldc, int cols, bool accumulate) {
  gemmTileBody<MR>(a, b, kc, c, ldc, cols, accumulate);
}

struct GemmTable {
  int maxRows = 0;
  GemmTileFn fn[kGemmMaxMR + 1] = {};
};

template <Isa I> constexpr GemmTable makeGemmTable() {
  GemmTable t;
  t.maxRows = gemmRows(I);
  [&]<int... Ms>(std::integer_sequence<int, Ms...>) {
    ((t.fn[Ms + 1] =
          I == Isa::Avx512 ? &gemmTileAvx512<Ms + 1> : &gemmTileAvx2<Ms + 1>),
     ...);
  }
  (std::make_integer_sequence<int, gemmRows(I)>{});
  return t;
}

/// The micro-kernels of the vector ISA in use.
const GemmTable &gemmTable() {
  static const GemmTable avx2 = makeGemmTable<Isa::Avx2>();
  static const GemmTable avx512 = makeGemmTable<Isa::Avx512>();
  return avx512KernelsActive() ? avx512 : avx2;
}

/// Per-thread panels and activation rows, allocated on the thread's first
/// GEMM (the only heap allocation of these kernels) and then reused.
float *gemmScratch() {
  thread_local std::vector<float> scratch(kGemmBlock * kGemmK +
                                          kGemmMaxMR * kGemmLda);
  return scratch.data();
}

template <ElementType E>
void packBlock(const void *w, int64_t in, int64_t oBegin, int64_t oEnd,
               int64_t k0, int64_t kc, float *panels) {
  const Storage<E> *rows = static_cast<const Storage<E> *>(w) + k0;
  for (int64_t o = oBegin; o < oEnd; o += kGemmN)
    packPanel<E>(rows + o * in, in, std::min<int64_t>(kGemmN, oEnd - o), kc,
                 panels + (o - oBegin) * kc);
}

/// Outputs [oBegin, oEnd) (at most kGemmBlock) of `rows` rows of x.
void gemmRange(const float *x, int64_t rows, int64_t in, Weight w,
               int64_t oBegin, int64_t oEnd, Weight bias, int64_t ldy,
               float *y) {
  const GemmTable &table = gemmTable();
  float *panels = gemmScratch();
  float *a = panels + kGemmBlock * kGemmK;
  for (int64_t k0 = 0; k0 < in; k0 += kGemmK) {
    int64_t kc = std::min(kGemmK, in - k0);
    switch (w.type) {
    case ElementType::BF16:
      packBlock<ElementType::BF16>(w.data, in, oBegin, oEnd, k0, kc, panels);
      break;
    case ElementType::F16:
      packBlock<ElementType::F16>(w.data, in, oBegin, oEnd, k0, kc, panels);
      break;
    default:
      packBlock<ElementType::F32>(w.data, in, oBegin, oEnd, k0, kc, panels);
      break;
    }
    for (int64_t r0 = 0; r0 < rows; r0 += table.maxRows) {
      int mr = static_cast<int>(std::min<int64_t>(table.maxRows, rows - r0));
      for (int m = 0; m < mr; ++m)
        std::copy_n(x + (r0 + m) * in + k0, kc, a + m * kGemmLda);
      for (int64_t o = oBegin; o < oEnd; o += kGemmN)
        table.fn[mr](a, panels + (o - oBegin) * kc, kc, y + r0 * ldy + o, ldy,
                     static_cast<int>(std::min<int64_t>(kGemmN, oEnd - o)),
                     k0 > 0);
    }
  }
  if (bias.data)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = oBegin; o < oEnd; ++o)
        y[r * ldy + o] += loadWeight(bias, o);
}

/// How one matrix is cut: outputs in blocks of `block` (a multiple of the
/// output tile), small enough that a block of weight rows stays in L2 while
/// the row tiles pass over it.
struct Plan {
  int64_t block;
  int oTile;
};

Plan planFor(int64_t rows, int64_t in, int64_t out, size_t elemBytes) {
  if (rows <= 8) // weight-streaming GEMV: each row is read once anyway.
    return {24, 4};
  int64_t rowBytes = std::max<int64_t>(1, in * static_cast<int64_t>(elemBytes));
  int64_t block = (512 * 1024) / rowBytes; // half of a 1 MiB L2
  block = std::clamp<int64_t>(block / 3 * 3, 3, 96);
  return {block, 3};
}

/// One matrix, run by the threads of an enclosing parallel region (a
/// worksharing loop over output blocks, no barrier at the end).
void linearShared(const float *x, int64_t rows, int64_t in, Weight w,
                  int64_t out, Weight bias, float *y) {
  if (rows <= 0 || out <= 0)
    return;
  const TileTable &table = tileTableFor(w.type);
  int64_t rowBytes = in * static_cast<int64_t>(elementSize(w.type));
  bool gemm = rows >= kGemmMinRows && vectorKernelsActive();
  Plan plan = gemm ? Plan{kGemmBlock, kGemmN}
                   : planFor(rows, in, out, elementSize(w.type));
  int64_t blocks = (out + plan.block - 1) / plan.block;
  int64_t panels = (out + kGemmN - 1) / kGemmN;
  // GEMM blocks are of equal width (in whole panels) and as many per thread:
  // a short last block would leave the same thread with less work on every
  // expert of groupedLinear (1408 = 5.5 blocks of 256).
  if (gemm)
    blocks = (blocks + omp_get_num_threads() - 1) / omp_get_num_threads() *
             omp_get_num_threads();
  auto blockBegin = [&](int64_t b) {
    return std::min(out, gemm ? b * panels / blocks * kGemmN : b * plan.block);
  };
  // Narrow matrices (few output blocks) over many rows would leave threads
  // idle: split the rows too, in chunks of whole row tiles.
  int64_t wanted = 2 * omp_get_num_threads();
  int64_t tileRows = gemm ? gemmTable().maxRows : 4;
  int64_t rowChunks =
      rows <= 8 || blocks >= wanted
          ? 1
          : std::min<int64_t>((wanted + blocks - 1) / blocks,
                              (rows + 4 * tileRows - 1) / (4 * tileRows));
  int64_t chunkRows =
      ((rows + rowChunks - 1) / rowChunks + tileRows - 1) / tileRows * tileRows;
  const char *wBytes = static_cast<const char *>(w.data);
#pragma omp for schedule(static) nowait
  for (int64_t item = 0; item < blocks * rowChunks; ++item) {
    int64_t b = item % blocks, r0 = item / blocks * chunkRows;
    int64_t o0 = blockBegin(b), o1 = blockBegin(b + 1);
    int64_t n = std::min(rows - r0, chunkRows);
    if (n <= 0 || o0 >= o1)
      continue;
    if (gemm)
      gemmRange(x + r0 * in, n, in, w, o0, o1, bias, out, y + r0 * out);
    else
      linearRange(table, x + r0 * in, n, in, wBytes, rowBytes, o0, o1,
                  plan.oTile, bias, out, y + r0 * out);
  }
}

//===----------------------------------------------------------------------===//
// FP8
//===----------------------------------------------------------------------===//
//
// Activations are quantized up front into scratch: the e4m3 values as fp32
// (exact), times 2^64 (see decodeE4m3), so that the tiles read them like
// fp32 activations, then one scale per row and K block. Weight codes are
// decoded in registers; a product of two e4m3 values has at most 8
// significant bits, so the only rounding is in the fp32 sums. Tiles keep a
// vector accumulator per (row, output) for the current K block and fold it
// into the total with the block's combined scale at the end of the block.
// They cover up to 4 rows x 3 outputs (8 with AVX-512's registers) or 1-2
// rows x 4 outputs, which fills the vector registers with accumulators, over
// chunks of K short enough that those rows stay in L1 while the tiles of an
// output block pass over them.

/// Activation codes are stored times 2^64 (see decodeE4m3).
constexpr float kCodeBias = 0x1p64f;

/// e4m3ToFloat(floatToE4m3(v)) without branches, so that the quantization
/// loop vectorizes.
inline float roundToE4m3(float v) {
  uint32_t bits = std::bit_cast<uint32_t>(v);
  uint32_t sign = bits & 0x80000000u, magnitude = bits & 0x7fffffffu;
  // Normals keep 3 mantissa bits (round to nearest even on the bits, which
  // carries into the exponent as it should); subnormals are multiples of
  // 2^-9, which adding 2^14 rounds to (its ulp) under round-to-nearest-even.
  float normal = std::bit_cast<float>(
      (magnitude + 0x7ffffu + ((magnitude >> 20) & 1u)) & 0xfff00000u);
  float absolute = std::bit_cast<float>(magnitude);
  float subnormal = (absolute + 0x1p14f) - 0x1p14f;
  float r = absolute < 0x1p-6f ? subnormal : normal;
  r = r > 448.0f ? 448.0f : r; // saturates (infinity too); NaN stays NaN
  return std::bit_cast<float>(std::bit_cast<uint32_t>(r) | sign);
}

inline float activationScale(float amax, bool pow2) {
  float s = std::max(amax, 1e-4f) / 448.0f;
  if (!pow2)
    return s;
  // 2^ceil(log2(s)) for the normal, positive s: bump the exponent unless the
  // mantissa is already zero.
  uint32_t bits = std::bit_cast<uint32_t>(s);
  if (bits & 0x7fffffu)
    bits = (bits + 0x800000u) & 0xff800000u;
  return std::bit_cast<float>(bits);
}

/// Quantized activations in the scratch: codes [rows, ld] then scales [rows,
/// nkb]. Rows are padded to a whole number of cache lines plus one so that
/// the rows of a tile do not map to the same L1 sets.
struct Fp8Rows {
  float *codes, *scales;
  int64_t ld, nkb;
};

int64_t fp8RowStride(int64_t in) { return (in + 15) / 16 * 16 + 16; }

Fp8Rows fp8Rows(float *scratch, int64_t rows, int64_t in, int64_t bc) {
  int64_t ld = fp8RowStride(in);
  return {scratch, scratch + rows * ld, ld, (in + bc - 1) / bc};
}

/// Quantizes `rows` rows of x into `q`; a worksharing loop with its barrier.
void quantizeActivations(const float *x, int64_t rows, int64_t in, int64_t bc,
                         bool pow2, const Fp8Rows &q) {
#pragma omp for schedule(static)
  for (int64_t item = 0; item < rows * q.nkb; ++item) {
    int64_t r = item / q.nkb, k0 = item % q.nkb * bc;
    int64_t n = std::min(bc, in - k0);
    const float *src = x + r * in + k0;
    float amax = 0.0f;
#pragma omp simd reduction(max : amax)
    for (int64_t i = 0; i < n; ++i)
      amax = std::max(amax, std::fabs(src[i]));
    float s = activationScale(amax, pow2);
    q.scales[item] = s;
    float *dst = q.codes + r * q.ld + k0;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
      dst[i] = roundToE4m3(src[i] / s) * kCodeBias;
  }
}

/// e4m3 values of the 256 codes, for the portable tile.
struct E4m3Table {
  float value[256];
  E4m3Table() {
    for (int c = 0; c < 256; ++c)
      value[c] = e4m3ToFloat(static_cast<uint8_t>(c));
  }
};
const E4m3Table &e4m3Table() {
  static const E4m3Table table;
  return table;
}

inline bool isNanCode(uint8_t c) { return (c & 0x7fu) == 0x7fu; }

/// Operands of one tile over K blocks [kbBegin, kbEnd): activation rows `ldx`
/// apart with their scales `nkb` apart, weight rows `in` apart, and each
/// output's row of weight scales.
struct Fp8Tile {
  const float *x;
  const float *xScale;
  const uint8_t *w;
  const float *const *wScale;
  int64_t ldx, in, bc, nkb, kbBegin, kbEnd;
};

/// NaN codes decode to finite values in the AVX2 tile (keeping the NaN test
/// out of the inner loop); an output with one in its part of the weight row
/// is NaN.
template <int R, int O> void applyNanCodes(const Fp8Tile &t, float *sums) {
  int64_t k0 = t.kbBegin * t.bc, k1 = std::min(t.in, t.kbEnd * t.bc);
  for (int o = 0; o < O; ++o)
    if (std::any_of(t.w + o * t.in + k0, t.w + o * t.in + k1, isNanCode))
      for (int r = 0; r < R; ++r)
        sums[r * O + o] = __builtin_nanf("");
}

/// The table decodes NaN codes to NaN, which the sums carry to the output.
template <int R, int O> void tileFp8Generic(const Fp8Tile &t, float *sums) {
  constexpr int L = 8;
  const float *lut = e4m3Table().value;
  float total[R][O] = {};
  for (int64_t kb = t.kbBegin; kb < t.kbEnd; ++kb) {
    int64_t k0 = kb * t.bc, k1 = std::min(t.in, k0 + t.bc);
    float acc[R][O][L] = {};
    int64_t i = k0;
    for (; i + L <= k1; i += L) {
      float wv[O][L];
      for (int o = 0; o < O; ++o)
        for (int l = 0; l < L; ++l)
          wv[o][l] = lut[t.w[o * t.in + i + l]];
      for (int r = 0; r < R; ++r)
        for (int o = 0; o < O; ++o)
          for (int l = 0; l < L; ++l)
            acc[r][o][l] += t.x[r * t.ldx + i + l] * wv[o][l];
    }
    for (int r = 0; r < R; ++r)
      for (int o = 0; o < O; ++o) {
        float part = 0;
        for (int l = 0; l < L; ++l)
          part += acc[r][o][l];
        for (int64_t k = i; k < k1; ++k)
          part += t.x[r * t.ldx + k] * lut[t.w[o * t.in + k]];
        float f = t.xScale[r * t.nkb + kb] * t.wScale[o][kb];
        total[r][o] += part * (1.0f / kCodeBias) * f;
      }
  }
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < O; ++o)
      sums[r * O + o] = total[r][o];
}

/// Eight codes to fp32 times 2^-120: the sign-extended byte shifted left by
/// 20 puts the exponent and mantissa fields in an fp32 whose exponent is 120
/// too small (normals and subnormals alike, as in e4m3ToFloat) and smears the
/// sign over bits 27-31, which the mask keeps only at 31. NaN codes come out
/// finite. Leaving the 2^-120 in (instead of a multiply per vector) is what
/// the 2^64 on the activations is for: products of the two stay normal fp32
/// (>= 2^-9 * 2^-9 * 2^-56) and exact; the block scale takes the 2^56 (so
/// s_x * s_w must stay below 2^72, far beyond fp8's useful range). The
/// subnormal codes are denormal FMA inputs, which cost nothing extra on the
/// CPUs we run on (a multiply by 2^120 of them does) and are exact as long
/// as denormals-are-zero is off, as the runtime leaves it.
KILN_AVX2 inline __m256 decodeE4m3(const uint8_t *p) {
  __m256i c = _mm256_cvtepi8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i *>(p)));
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(c, 20),
                                              _mm256_set1_epi32(0x87f00000)));
}

/// NaN codes are the ones with c | 0x80 == 0xff, so the running maximum of
/// c | 0x80 over a tile's codes is 0xff exactly when it has one.
KILN_AVX2 inline __m256i maxNanKey(__m256i seen, const uint8_t *p) {
  __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
  return _mm256_max_epu8(
      seen, _mm256_or_si256(c, _mm256_set1_epi8(static_cast<char>(0x80))));
}

/// How far ahead of its reads each weight row of a tile prefetches. The
/// decode leaves the hardware prefetchers too little lead on short rows
/// (2 KiB at in = 2048: a few streams per page, retrained every tile); 16 KiB
/// ahead, which also reaches into the rows of the next tiles, made decode
/// (1 row) GEMVs of V2-Lite shapes 1.3-2x faster on an EPYC (Zen 4).
constexpr int64_t kFp8PrefetchBytes = 16384;

/// The AVX2 tile, inlined into entry points for AVX2 and for AVX-512VL,
/// whose 32 vector registers hold the accumulators of larger tiles.
template <int R, int O>
KILN_AVX2 [[gnu::always_inline]] inline void tileFp8Body(const Fp8Tile &t,
                                                         float *sums) {
  constexpr float kUnbias = 0x1p120f / kCodeBias;
  __m256 total[R][O];
  float totalTail[R][O];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int o = 0; o < O; ++o) {
      total[r][o] = _mm256_setzero_ps();
      totalTail[r][o] = 0.0f;
    }
  __m256i seen = _mm256_setzero_si256();
  bool nanInTail = false;
  for (int64_t kb = t.kbBegin; kb < t.kbEnd; ++kb) {
    int64_t k0 = kb * t.bc, k1 = std::min(t.in, k0 + t.bc);
    __m256 acc[R][O];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
      for (int o = 0; o < O; ++o)
        acc[r][o] = _mm256_setzero_ps();
    int64_t i = k0;
    // 32 codes per row and step: one NaN check, four 8-wide FMAs.
    for (; i + 32 <= k1; i += 32) {
#pragma GCC unroll 4
      for (int o = 0; o < O; ++o) {
        seen = maxNanKey(seen, t.w + o * t.in + i);
        _mm_prefetch(reinterpret_cast<const char *>(t.w + o * t.in + i) +
                         kFp8PrefetchBytes,
                     _MM_HINT_T0);
      }
#pragma GCC unroll 4
      for (int u = 0; u < 32; u += 8) {
        __m256 wv[O];
#pragma GCC unroll 4
        for (int o = 0; o < O; ++o)
          wv[o] = decodeE4m3(t.w + o * t.in + i + u);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          __m256 xv = _mm256_loadu_ps(t.x + r * t.ldx + i + u);
#pragma GCC unroll 4
          for (int o = 0; o < O; ++o)
            acc[r][o] = _mm256_fmadd_ps(xv, wv[o], acc[r][o]);
        }
      }
    }
    int64_t vectorEnd = i + (k1 - i) / 8 * 8;
    if (i < k1)
      for (int o = 0; o < O; ++o)
        nanInTail |=
            std::any_of(t.w + o * t.in + i, t.w + o * t.in + k1, isNanCode);
    for (; i < vectorEnd; i += 8) {
      __m256 wv[O];
#pragma GCC unroll 4
      for (int o = 0; o < O; ++o)
        wv[o] = decodeE4m3(t.w + o * t.in + i);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256 xv = _mm256_loadu_ps(t.x + r * t.ldx + i);
#pragma GCC unroll 4
        for (int o = 0; o < O; ++o)
          acc[r][o] = _mm256_fmadd_ps(xv, wv[o], acc[r][o]);
      }
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
      for (int o = 0; o < O; ++o) {
        float f = t.xScale[r * t.nkb + kb] * t.wScale[o][kb];
        total[r][o] = _mm256_fmadd_ps(acc[r][o], _mm256_set1_ps(f * kUnbias),
                                      total[r][o]);
        if (i < k1) {
          float part = 0;
          for (int64_t k = i; k < k1; ++k)
            part += t.x[r * t.ldx + k] * e4m3ToFloat(t.w[o * t.in + k]);
          totalTail[r][o] += part * (1.0f / kCodeBias) * f;
        }
      }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int o = 0; o < O; ++o)
      sums[r * O + o] = hsum(total[r][o]) + totalTail[r][o];
  __m256i nan = _mm256_cmpeq_epi8(seen, _mm256_set1_epi8(-1));
  if (nanInTail || !_mm256_testz_si256(nan, nan))
    applyNanCodes<R, O>(t, sums);
}

template <int R, int O>
KILN_AVX2 void tileFp8Avx2(const Fp8Tile &t, float *sums) {
  tileFp8Body<R, O>(t, sums);
}

template <int R, int O>
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl"))) void
tileFp8Avx512(const Fp8Tile &t, float *sums) {
  tileFp8Body<R, O>(t, sums);
}

using Fp8TileFn = void (*)(const Fp8Tile &, float *);

constexpr int kMaxFp8R = 8, kMaxFp8O = 4;

/// Outputs per tile for R rows.
constexpr int fp8OutputTile(int rows) { return rows <= 2 ? 4 : 3; }

struct Fp8TileTable {
  int maxRows = 0;
  Fp8TileFn fn[kMaxFp8R + 1][kMaxFp8O + 1] = {};
};

template <Isa I, int R, int O> constexpr Fp8TileFn fp8Tile() {
  if constexpr (I == Isa::Avx512)
    return &tileFp8Avx512<R, O>;
  else if constexpr (I == Isa::Avx2)
    return &tileFp8Avx2<R, O>;
  else
    return &tileFp8Generic<R, O>;
}

template <Isa I> constexpr Fp8TileTable makeFp8Table() {
  Fp8TileTable t;
  t.maxRows = maxRows(I);
  [&]<int... Rs>(std::integer_sequence<int, Rs...>) {
    (
        [&]<int R>() {
          [&]<int... Os>(std::integer_sequence<int, Os...>) {
            ((t.fn[R][Os + 1] = fp8Tile<I, R, Os + 1>()), ...);
          }
          (std::make_integer_sequence<int, fp8OutputTile(R)>{});
        }.template operator()<Rs + 1>(),
        ...);
  }
  (std::make_integer_sequence<int, maxRows(I)>{});
  return t;
}

const Fp8TileTable &fp8TileTable() {
  static const Fp8TileTable portable = makeFp8Table<Isa::Portable>();
  static const Fp8TileTable avx2 = makeFp8Table<Isa::Avx2>();
  static const Fp8TileTable avx512 = makeFp8Table<Isa::Avx512>();
  if (!vectorKernelsActive())
    return portable;
  return avx512KernelsActive() ? avx512 : avx2;
}

constexpr int64_t kMaxFp8Block = 96;

/// One FP8 matrix over `rows` quantized activation rows, run by the threads
/// of an enclosing parallel region like linearShared.
void linearFp8Shared(const Fp8Rows &q, int64_t rows, int64_t in, Weight w,
                     int64_t out, Weight bias, float *y) {
  if (rows <= 0 || out <= 0)
    return;
  const Fp8TileTable &table = fp8TileTable();
  int64_t bc = w.blockCols;
  // Decode streams the weights once; otherwise a block of weight rows
  // should stay in L2 while all row tiles pass over it.
  int64_t block = rows <= 8
                      ? 24
                      : std::clamp<int64_t>(
                            (512 * 1024) / std::max<int64_t>(1, in) / 12 * 12,
                            12, kMaxFp8Block);
  int64_t blocks = (out + block - 1) / block;
  // K chunks of whole blocks whose activations (one row tile) fit in 16 KiB.
  int64_t chunkRows = std::min<int64_t>(rows, table.maxRows);
  int64_t chunk = std::max<int64_t>(1, 4096 / (chunkRows * bc));
  const uint8_t *wCodes = static_cast<const uint8_t *>(w.data);
#pragma omp for schedule(static) nowait
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t oBegin = b * block, oEnd = std::min(out, oBegin + block);
    float acc[kMaxFp8R][kMaxFp8Block];
    float sums[kMaxFp8R * kMaxFp8O];
    const float *wScale[kMaxFp8O];
    for (int64_t r0 = 0; r0 < rows; r0 += table.maxRows) {
      int R = static_cast<int>(std::min<int64_t>(table.maxRows, rows - r0));
      int oTile = fp8OutputTile(R);
      for (int64_t kb = 0; kb < q.nkb; kb += chunk) {
        for (int64_t o0 = oBegin; o0 < oEnd; o0 += oTile) {
          int O = static_cast<int>(std::min<int64_t>(oTile, oEnd - o0));
          for (int o = 0; o < O; ++o)
            wScale[o] = w.scale + (o0 + o) / w.blockRows * q.nkb;
          Fp8Tile tile{q.codes + r0 * q.ld,
                       q.scales + r0 * q.nkb,
                       wCodes + o0 * in,
                       wScale,
                       q.ld,
                       in,
                       bc,
                       q.nkb,
                       kb,
                       std::min(q.nkb, kb + chunk)};
          table.fn[R][O](tile, sums);
          for (int r = 0; r < R; ++r)
            for (int o = 0; o < O; ++o) {
              float &a = acc[r][o0 - oBegin + o];
              a = (kb == 0 ? 0.0f : a) + sums[r * O + o];
            }
        }
      }
      for (int r = 0; r < R; ++r)
        for (int64_t o = oBegin; o < oEnd; ++o) {
          float bv = bias.data ? loadWeight(bias, o) : 0.0f;
          y[(r0 + r) * out + o] = acc[r][o - oBegin] + bv;
        }
    }
  }
}

} // namespace

int64_t fp8ActivationScratch(int64_t rows, int64_t in, int64_t blockCols) {
  return rows * (fp8RowStride(in) + (in + blockCols - 1) / blockCols);
}

void linear(const float *x, int64_t rows, int64_t in, Weight w, int64_t out,
            Weight bias, float *y, Fp8Activations act) {
  if (w.type == ElementType::F8E4M3) {
    Fp8Rows q = fp8Rows(act.scratch, rows, in, w.blockCols);
#pragma omp parallel
    {
      quantizeActivations(x, rows, in, w.blockCols, act.pow2Scale, q);
      linearFp8Shared(q, rows, in, w, out, bias, y);
    }
    return;
  }
#pragma omp parallel
  linearShared(x, rows, in, w, out, bias, y);
}

void quantizeFp8(const float *x, int64_t rows, int64_t in, int64_t blockCols,
                 bool pow2, uint8_t *codes, float *scales) {
  int64_t blocks = (in + blockCols - 1) / blockCols;
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < rows * blocks; ++item) {
    int64_t r = item / blocks, k0 = item % blocks * blockCols;
    int64_t n = std::min(blockCols, in - k0);
    const float *src = x + r * in + k0;
    float amax = 0.0f;
    for (int64_t i = 0; i < n; ++i)
      amax = std::max(amax, std::fabs(src[i]));
    float s = activationScale(amax, pow2);
    scales[item] = s;
    for (int64_t i = 0; i < n; ++i)
      codes[r * in + k0 + i] = floatToE4m3(src[i] / s);
  }
}

void linearQuantized(const uint8_t *codes, const float *scales, int64_t rows,
                     int64_t in, Weight w, int64_t out, Weight bias, float *y,
                     float *scratch) {
  Fp8Rows q = fp8Rows(scratch, rows, in, w.blockCols);
  const E4m3Table &table = e4m3Table();
#pragma omp parallel
  {
    // Into the GEMM's layout: code values times 2^64, padded rows.
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < in; ++i)
        q.codes[r * q.ld + i] = table.value[codes[r * in + i]] * kCodeBias;
      for (int64_t b = 0; b < q.nkb; ++b)
        q.scales[r * q.nkb + b] = scales[r * q.nkb + b];
    }
    linearFp8Shared(q, rows, in, w, out, bias, y);
  }
}

void groupedLinear(const float *x, int64_t in, Weight w, int64_t experts,
                   int64_t out, const int32_t *offsets, float *y,
                   Fp8Activations act) {
  int64_t matrixBytes = out * in * static_cast<int64_t>(elementSize(w.type));
  if (w.type == ElementType::F8E4M3) {
    int64_t rows = offsets[experts];
    Fp8Rows q = fp8Rows(act.scratch, rows, in, w.blockCols);
    int64_t matrixScales = (out + w.blockRows - 1) / w.blockRows * q.nkb;
#pragma omp parallel
    {
      quantizeActivations(x, rows, in, w.blockCols, act.pow2Scale, q);
      for (int64_t e = 0; e < experts; ++e) {
        int64_t begin = offsets[e];
        Weight we = w;
        we.data = static_cast<const char *>(w.data) + e * matrixBytes;
        we.scale = w.scale + e * matrixScales;
        Fp8Rows qe = q;
        qe.codes += begin * q.ld;
        qe.scales += begin * q.nkb;
        linearFp8Shared(qe, offsets[e + 1] - begin, in, we, out, Weight{},
                        y + begin * out);
      }
    }
    return;
  }
#pragma omp parallel
  for (int64_t e = 0; e < experts; ++e) {
    int64_t begin = offsets[e], rows = offsets[e + 1] - begin;
    if (rows <= 0)
      continue;
    Weight we{static_cast<const char *>(w.data) + e * matrixBytes, w.type};
    linearShared(x + begin * in, rows, in, we, out, Weight{}, y + begin * out);
  }
}

} // namespace kiln::cpu
