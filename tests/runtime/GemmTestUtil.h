// Operands and checks shared by the tests of the CUDA executor's GEMM
// kernels' host builds (MatmulKernelTest.cpp, MmaGemmKernelTest.cpp):
// random weights of every type (FP8 with block scales), activations, FP8
// activation quantization as the device does it, and the summation-order
// bound the outputs are held to.
//
// Tolerance: both sides sum the same K products in fp32 in different
// orders (the device kernel also scales each FP8 product instead of each
// block's partial sum), so |got - want| <= 2 K eps sum_i |x_i w_i| (the
// standard bound for two recursive summations), computed per output.
#ifndef KILN_TESTS_RUNTIME_GEMM_TEST_UTIL_H
#define KILN_TESTS_RUNTIME_GEMM_TEST_UTIL_H

#include "Matmul.h"

#include "kiln/Float.h"
#include "runtime/src/cpu/Kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace kiln::testing {

struct Weights {
  cpu::ElementType type;
  std::vector<uint8_t> bytes; // the stored weights
  std::vector<float> scales;  // FP8 block scales
  std::vector<float> values;  // dequantized, for the error bound
};

/// [matrices, n, k] weights of `type` (FP8: random finite codes and
/// positive 128x128 block scales).
inline Weights makeWeights(cpu::ElementType type, int64_t matrices, int64_t n,
                           int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  Weights w{type, {}, {}, {}};
  int64_t count = matrices * n * k;
  w.values.resize(count);
  if (type == cpu::ElementType::F8E4M3) {
    int64_t nb = (n + 127) / 128, kb = (k + 127) / 128;
    std::uniform_real_distribution<float> scale(0.001f, 0.01f);
    w.scales.resize(matrices * nb * kb);
    for (float &s : w.scales)
      s = scale(rng);
    w.bytes.resize(count);
    std::uniform_int_distribution<int> code(0, 253);
    for (int64_t i = 0; i < count; ++i) {
      uint8_t c = static_cast<uint8_t>(code(rng));
      if ((c & 0x7f) == 0x7f) // NaN
        c = 0x7e;
      w.bytes[i] = c;
      int64_t m = i / (n * k), r = i / k % n, col = i % k;
      w.values[i] =
          e4m3ToFloat(c) * w.scales[(m * nb + r / 128) * kb + col / 128];
    }
    return w;
  }
  size_t size = type == cpu::ElementType::F32 ? 4 : 2;
  w.bytes.resize(count * size);
  for (int64_t i = 0; i < count; ++i) {
    float v = normal(rng);
    if (type == cpu::ElementType::BF16) {
      uint16_t b = floatToBf16(v);
      std::memcpy(&w.bytes[i * 2], &b, 2);
      v = bf16ToFloat(b);
    } else if (type == cpu::ElementType::F16) {
      uint16_t h = floatToF16(v);
      std::memcpy(&w.bytes[i * 2], &h, 2);
      v = f16ToFloat(h);
    } else {
      std::memcpy(&w.bytes[i * 4], &v, 4);
    }
    w.values[i] = v;
  }
  return w;
}

inline cpu::Weight cpuWeight(const Weights &w) {
  cpu::Weight c{w.bytes.data(), w.type};
  if (w.type == cpu::ElementType::F8E4M3) {
    c.scale = w.scales.data();
    c.blockRows = 128;
    c.blockCols = 128;
  }
  return c;
}

inline const char *name(cpu::ElementType type) {
  switch (type) {
  case cpu::ElementType::BF16:
    return "bf16";
  case cpu::ElementType::F16:
    return "f16";
  case cpu::ElementType::F8E4M3:
    return "fp8";
  default:
    return "f32";
  }
}

/// Values as the tensor-core kernels multiply them (rounded to bf16).
inline std::vector<float> roundedToBf16(std::vector<float> v) {
  for (float &x : v)
    x = bf16ToFloat(floatToBf16(x));
  return v;
}

inline float maxAbs(const std::vector<float> &v) {
  float m = 0;
  for (float x : v)
    m = std::max(m, std::fabs(x));
  return m;
}

inline std::vector<float> randomRows(int64_t rows, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(rows * k);
  for (float &v : x)
    v = normal(rng);
  return x;
}

/// FP8 activations as the device quantizes them: decoded codes + scales.
/// GemmParams of `rows` activation rows against the [n, k] matrices of `w`
/// (FP8 in blocks of 128) into `out`, rows k and n apart as dense and
/// grouped GEMMs lay them out; the test sets the activations, bias and
/// expert offsets.
inline GemmParams gemmParams(const Weights &w, float *out, int64_t rows,
                             int64_t n, int64_t k) {
  GemmParams p{};
  p.w = w.bytes.data();
  p.wScale = w.scales.data();
  p.out = out;
  p.xRowStride = k;
  p.outRowStride = n;
  p.rows = rows;
  p.n = n;
  p.k = k;
  p.blockRows = p.blockCols = 128;
  return p;
}

/// The plain GEMV's host build for weights of `type`; FP8 on e4m3 codes
/// (p.xCodes) with `codes`.
inline void runGemv(cpu::ElementType type, Dim3 grid, const GemmParams &p,
                    bool codes = false) {
  switch (type) {
  case cpu::ElementType::BF16:
    return kiln_gemv_bf16_host(grid, p);
  case cpu::ElementType::F16:
    return kiln_gemv_f16_host(grid, p);
  case cpu::ElementType::F8E4M3:
    return codes ? kiln_gemv_f8e4m3_q8_host(grid, p)
                 : kiln_gemv_f8e4m3_host(grid, p);
  default:
    return kiln_gemv_f32_host(grid, p);
  }
}

/// A head GEMM's layout on top: x [rows, heads, xWidth] (each head's k
/// values start its row), out [rows, heads, n].
inline void setHeadLayout(GemmParams &p, int64_t heads, int64_t xWidth) {
  p.xRowStride = heads * xWidth;
  p.xMatrixStride = xWidth;
  p.outRowStride = heads * p.n;
  p.outMatrixStride = p.n;
}

struct Quantized {
  std::vector<float> codes, scales;
};
inline Quantized quantize(const std::vector<float> &x, int64_t rows, int64_t k,
                          bool pow2) {
  Quantized q{std::vector<float>(rows * k),
              std::vector<float>(rows * ((k + 127) / 128))};
  kiln_quantize_rows_host(
      {static_cast<int>(rows), 1, 1},
      {x.data(), q.codes.data(), q.scales.data(), nullptr, k, 128, pow2});
  return q;
}

/// `q`'s codes as e4m3 bytes, as a fused kernel's epilogue writes them.
inline std::vector<unsigned char> e4m3Bytes(const Quantized &q) {
  std::vector<unsigned char> bytes(q.codes.size());
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = encodeE4m3(q.codes[i]);
  return bytes;
}

/// The experts with rows in `offsets` as kiln_moe_route lists them for
/// GemmParams::activeExperts: their count, then the experts in order.
inline std::vector<int32_t>
activeExpertsOf(const std::vector<int32_t> &offsets) {
  std::vector<int32_t> active{0};
  for (size_t e = 0; e + 1 < offsets.size(); ++e)
    if (offsets[e + 1] > offsets[e]) {
      active.push_back(static_cast<int32_t>(e));
      ++active[0];
    }
  return active;
}

/// `p` grouped by expert: expert e's rows [offsets[e], offsets[e + 1]),
/// those with rows listed in `active` (activeExpertsOf; null: every expert
/// gets its blocks).
inline void setExperts(GemmParams &p, const std::vector<int32_t> &offsets,
                       const int32_t *active) {
  p.offsets = offsets.data();
  p.experts = static_cast<int>(offsets.size()) - 1;
  p.activeExperts = active;
}

/// The expert whose rows [offsets[e], offsets[e + 1]) hold `row`; 0 for a
/// dense GEMM (no offsets).
inline int64_t expertOfRow(const std::vector<int32_t> &offsets, int64_t row) {
  int64_t e = 0;
  while (!offsets.empty() && offsets[e + 1] <= row)
    ++e;
  return e;
}

/// Checks got against want with the summation bound over the dequantized
/// operands (for FP8, the quantized activations).
inline void expectClose(const std::vector<float> &got,
                        const std::vector<float> &want,
                        const std::vector<float> &x, int64_t xRowStride,
                        const std::vector<float> &w, int64_t k,
                        const std::function<int64_t(int64_t)> &xRowOf,
                        const std::function<int64_t(int64_t)> &wRowOf,
                        const std::string &what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    double magnitude = 0;
    const float *xr = x.data() + xRowOf(static_cast<int64_t>(i)) * xRowStride;
    const float *wr = w.data() + wRowOf(static_cast<int64_t>(i)) * k;
    for (int64_t j = 0; j < k; ++j)
      magnitude += std::fabs(double(xr[j]) * wr[j]);
    double bound = 2.0 * k * 0x1p-24 * magnitude + 1e-30;
    ASSERT_NEAR(got[i], want[i], bound) << what << " output " << i;
  }
}

} // namespace kiln::testing

#endif // KILN_TESTS_RUNTIME_GEMM_TEST_UTIL_H
