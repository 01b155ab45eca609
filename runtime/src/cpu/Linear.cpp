// linear and groupedLinear: y = x w^T (+ bias) with w [out, in] stored in
// fp32, bf16 or f16, converted to fp32 in registers as it is read.
//
// The work is split over output features (each thread owns a contiguous
// range of weight rows, so every weight byte is read from memory once), and
// within a range into tiles of R input rows x O output features whose R * O
// dot products run together: each loaded weight vector is used R times and
// each loaded input vector O times. Decode (few rows) is bound by the weight
// stream; prefill blocks the outputs so that a block of weight rows stays in
// L2 while every tile of input rows passes over it.
//
// Two implementations of the tile: AVX2 + FMA + F16C intrinsics (chosen at
// run time when the CPU has them) and a portable one the compiler
// vectorizes with the baseline instruction set.
#include "runtime/src/cpu/Kernels.h"

#include "kiln/Float.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <immintrin.h>
#include <omp.h>
#include <utility>

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

template <ElementType E, int R, int O>
KILN_AVX2 void tileAvx2(const float *x, int64_t ldx, const Storage<E> *w,
                        int64_t ldw, int64_t in, float *sums) {
  // A single row gets two accumulators per output to hide the FMA latency.
  constexpr int U = R == 1 ? 2 : 1;
  __m256 acc[R][O][U];
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < O; ++o)
      for (int u = 0; u < U; ++u)
        acc[r][o][u] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 * U <= in; i += 8 * U) {
    for (int u = 0; u < U; ++u) {
      __m256 wv[O];
      for (int o = 0; o < O; ++o)
        wv[o] = load8<E>(w + o * ldw + i + 8 * u);
      for (int r = 0; r < R; ++r) {
        __m256 xv = _mm256_loadu_ps(x + r * ldx + i + 8 * u);
        for (int o = 0; o < O; ++o)
          acc[r][o][u] = _mm256_fmadd_ps(xv, wv[o], acc[r][o][u]);
      }
    }
  }
  for (; i + 8 <= in; i += 8) {
    __m256 wv[O];
    for (int o = 0; o < O; ++o)
      wv[o] = load8<E>(w + o * ldw + i);
    for (int r = 0; r < R; ++r) {
      __m256 xv = _mm256_loadu_ps(x + r * ldx + i);
      for (int o = 0; o < O; ++o)
        acc[r][o][0] = _mm256_fmadd_ps(xv, wv[o], acc[r][o][0]);
    }
  }
  for (int r = 0; r < R; ++r)
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

//===----------------------------------------------------------------------===//
// Driver
//===----------------------------------------------------------------------===//

using TileFn = void (*)(const float *, int64_t, const void *, int64_t, int64_t,
                        float *);

template <ElementType E, bool Avx2, int R, int O>
void tileThunk(const float *x, int64_t ldx, const void *w, int64_t ldw,
               int64_t in, float *sums) {
  if constexpr (Avx2)
    tileAvx2<E, R, O>(x, ldx, static_cast<const Storage<E> *>(w), ldw, in,
                      sums);
  else
    tileGeneric<E, R, O>(x, ldx, static_cast<const Storage<E> *>(w), ldw, in,
                         sums);
}

constexpr int kMaxR = 4, kMaxO = 4;

/// Tile functions for R = 1..4 rows and O = 1..4 outputs.
struct TileTable {
  TileFn fn[kMaxR + 1][kMaxO + 1] = {};
};

template <ElementType E, bool Avx2> constexpr TileTable makeTable() {
  TileTable t;
  [&]<int... Rs>(std::integer_sequence<int, Rs...>) {
    (
        [&]<int R>() {
          t.fn[R][1] = &tileThunk<E, Avx2, R, 1>;
          t.fn[R][2] = &tileThunk<E, Avx2, R, 2>;
          t.fn[R][3] = &tileThunk<E, Avx2, R, 3>;
          t.fn[R][4] = &tileThunk<E, Avx2, R, 4>;
        }.template operator()<Rs + 1>(),
        ...);
  }
  (std::make_integer_sequence<int, kMaxR>{});
  return t;
}

template <ElementType E> const TileTable &tileTable() {
  static const TileTable generic = makeTable<E, false>();
  static const TileTable avx2 = makeTable<E, true>();
  return vectorKernelsActive() ? avx2 : generic;
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

/// Computes outputs [oBegin, oEnd) of all rows: rows in tiles of up to 4,
/// outputs in tiles of up to `oTile`. `w` points at weight row 0.
void linearRange(const TileTable &table, const float *x, int64_t rows,
                 int64_t in, const char *w, int64_t rowBytes, int64_t oBegin,
                 int64_t oEnd, int oTile, Weight bias, int64_t ldy, float *y) {
  float sums[kMaxR * kMaxO];
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxR) {
    int R = static_cast<int>(std::min<int64_t>(kMaxR, rows - r0));
    // 4 x 4 accumulators would spill the 16 vector registers.
    int tile = R == kMaxR ? std::min(oTile, 3) : oTile;
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
  Plan plan = planFor(rows, in, out, elementSize(w.type));
  int64_t blocks = (out + plan.block - 1) / plan.block;
  // Narrow matrices (few output blocks) over many rows would leave threads
  // idle: split the rows too, in chunks of whole row tiles.
  int64_t wanted = 2 * omp_get_num_threads();
  int64_t rowChunks =
      rows <= 8 || blocks >= wanted
          ? 1
          : std::min<int64_t>((wanted + blocks - 1) / blocks,
                              (rows + 4 * kMaxR - 1) / (4 * kMaxR));
  int64_t chunkRows =
      ((rows + rowChunks - 1) / rowChunks + kMaxR - 1) / kMaxR * kMaxR;
  const char *wBytes = static_cast<const char *>(w.data);
#pragma omp for schedule(static) nowait
  for (int64_t item = 0; item < blocks * rowChunks; ++item) {
    int64_t b = item % blocks, r0 = item / blocks * chunkRows;
    int64_t o0 = b * plan.block, o1 = std::min(out, o0 + plan.block);
    int64_t n = std::min(rows - r0, chunkRows);
    if (n > 0)
      linearRange(table, x + r0 * in, n, in, wBytes, rowBytes, o0, o1,
                  plan.oTile, bias, out, y + r0 * out);
  }
}

} // namespace

void linear(const float *x, int64_t rows, int64_t in, Weight w, int64_t out,
            Weight bias, float *y) {
#pragma omp parallel
  linearShared(x, rows, in, w, out, bias, y);
}

void groupedLinear(const float *x, int64_t in, Weight w, int64_t experts,
                   int64_t out, const int32_t *offsets, float *y) {
  int64_t matrixBytes = out * in * static_cast<int64_t>(elementSize(w.type));
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
