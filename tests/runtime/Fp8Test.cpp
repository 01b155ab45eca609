// FP8 e4m3fn: the conversions in kiln/Float.h against CUDA's own host
// implementation (when its header is available) and an independent
// double-precision model; quantizeFp8Blocks; and the FP8 GEMM kernels against
// references that quantize the activations on their own and multiply in
// double.
#include "kiln/Float.h"
#include "kiln/WeightTransforms.h"
#include "runtime/src/cpu/Kernels.h"
#include "tests/runtime/ForEachIsa.h"

#include "gtest/gtest.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#if KILN_HAVE_CUDA_FP8
#include <cuda_fp8.h>
#endif

namespace kiln {
namespace {

//===----------------------------------------------------------------------===//
// Conversions
//===----------------------------------------------------------------------===//

/// Value of a code from its fields, in double (NaN for S.1111.111).
double modelDecode(uint8_t code) {
  int exponent = (code >> 3) & 0xf, mantissa = code & 7;
  double sign = code & 0x80 ? -1.0 : 1.0;
  if (exponent == 15 && mantissa == 7)
    return std::numeric_limits<double>::quiet_NaN();
  if (exponent == 0)
    return sign * std::ldexp(mantissa / 8.0, -6);
  return sign * std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
}

/// Nearest finite code in double, ties to the even code, beyond 448
/// (infinity too) 448, NaN 0x7f.
uint8_t modelEncode(float x) {
  static const std::vector<double> magnitudes = [] {
    std::vector<double> m;
    for (int c = 0; c < 0x7f; ++c)
      m.push_back(modelDecode(static_cast<uint8_t>(c)));
    return m;
  }();
  if (std::isnan(x))
    return 0x7f;
  uint8_t sign = std::signbit(x) ? 0x80 : 0;
  double a = std::fabs(static_cast<double>(x));
  auto upper = std::lower_bound(magnitudes.begin(), magnitudes.end(), a);
  int code;
  if (upper == magnitudes.end()) {
    code = 0x7e;
  } else {
    int hi = static_cast<int>(upper - magnitudes.begin());
    int lo = std::max(hi - 1, 0);
    double dLo = a - magnitudes[lo], dHi = magnitudes[hi] - a;
    code = dLo < dHi ? lo : dHi < dLo ? hi : (lo % 2 == 0 ? lo : hi);
  }
  return static_cast<uint8_t>(sign | code);
}

bool sameFloat(float a, float b) {
  return std::isnan(a)
             ? std::isnan(b)
             : std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

/// Inputs where encoders usually go wrong: every code's value, the midpoints
/// between adjacent codes and their fp32 neighbours, the saturation range,
/// infinities and NaNs.
std::vector<float> edgeInputs() {
  std::vector<float> v;
  auto withNeighbours = [&](float x) {
    v.push_back(x);
    v.push_back(std::nextafter(x, 0.0f));
    v.push_back(std::nextafter(x, std::numeric_limits<float>::infinity()));
  };
  for (int c = 0; c < 0x7f; ++c) {
    double value = modelDecode(static_cast<uint8_t>(c));
    withNeighbours(static_cast<float>(value));
    // Midpoints are exact in fp32 (e4m3 has 3 mantissa bits).
    double next = c + 1 < 0x7f ? modelDecode(static_cast<uint8_t>(c + 1))
                               : 480.0; // 448 + one e4m3 ulp
    withNeighbours(static_cast<float>((value + next) / 2));
  }
  for (float x : {0x1p-10f, 0x1p-11f, 3 * 0x1p-11f, 0x1p-20f, 0x1p-126f,
                  0x1p-149f, 460.0f, 464.0f, 470.0f, 480.0f, 500.0f, 1e6f,
                  std::numeric_limits<float>::max()})
    withNeighbours(x);
  v.push_back(std::numeric_limits<float>::infinity());
  v.push_back(std::numeric_limits<float>::quiet_NaN());
  v.push_back(std::bit_cast<float>(0x7f800001u)); // signalling NaN
  v.push_back(std::bit_cast<float>(0x7fffffffu));
  size_t n = v.size();
  for (size_t i = 0; i < n; ++i)
    v.push_back(-v[i]);
  return v;
}

TEST(Fp8Conversion, DecodeMatchesModel) {
  for (int c = 0; c < 256; ++c) {
    double expected = modelDecode(static_cast<uint8_t>(c));
    float got = e4m3ToFloat(static_cast<uint8_t>(c));
    ASSERT_TRUE(std::isnan(expected)
                    ? std::isnan(got)
                    : got == expected && std::signbit(got) == (c >= 0x80))
        << "code " << c;
  }
}

TEST(Fp8Conversion, EncodeMatchesModelAtEdges) {
  for (float x : edgeInputs())
    ASSERT_EQ(floatToE4m3(x), modelEncode(x))
        << "x = " << x << " bits " << std::hex << std::bit_cast<uint32_t>(x);
}

TEST(Fp8Conversion, EncodeRoundTripsEveryCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f)
      continue;
    ASSERT_EQ(floatToE4m3(e4m3ToFloat(static_cast<uint8_t>(c))), c);
  }
}

/// The first of every 97th fp32 bit pattern (a stride coprime to the field
/// widths, so every low-mantissa residue and every exponent is visited) where
/// `same` fails, or 0 when there is none.
template <typename F> uint32_t sweepMismatch(F same) {
  for (uint64_t bits = 5; bits <= 0xffffffffu; bits += 97)
    if (!same(std::bit_cast<float>(static_cast<uint32_t>(bits))))
      return static_cast<uint32_t>(bits);
  return 0;
}

TEST(Fp8Conversion, EncodeMatchesModelSweep) {
  EXPECT_EQ(
      sweepMismatch([](float x) { return floatToE4m3(x) == modelEncode(x); }),
      0u);
}

#if KILN_HAVE_CUDA_FP8

uint8_t cudaEncode(float x) {
  return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

float cudaDecode(uint8_t code) {
  __nv_fp8_e4m3 v;
  v.__x = code;
  return static_cast<float>(v);
}

TEST(Fp8Cuda, DecodeAllCodes) {
  for (int c = 0; c < 256; ++c)
    ASSERT_TRUE(sameFloat(e4m3ToFloat(static_cast<uint8_t>(c)),
                          cudaDecode(static_cast<uint8_t>(c))))
        << "code " << c;
}

TEST(Fp8Cuda, EncodeEdges) {
  for (float x : edgeInputs())
    ASSERT_EQ(floatToE4m3(x), cudaEncode(x))
        << "x = " << x << " bits " << std::hex << std::bit_cast<uint32_t>(x);
}

TEST(Fp8Cuda, EncodeSubnormalsAndZeros) {
  // Every fp32 below the smallest e4m3 normal (2^-6) that is a multiple of
  // 2^-20 (sub-ulp of the 2^-9 e4m3 subnormal step), and the fp32
  // subnormals' extremes.
  for (float sign : {1.0f, -1.0f})
    for (int i = 0; i <= (1 << 14); ++i) {
      float x = sign * std::ldexp(static_cast<float>(i), -20);
      ASSERT_EQ(floatToE4m3(x), cudaEncode(x)) << x;
    }
}

TEST(Fp8Cuda, EncodeSweep) {
  EXPECT_EQ(
      sweepMismatch([](float x) { return floatToE4m3(x) == cudaEncode(x); }),
      0u);
}

#endif // KILN_HAVE_CUDA_FP8

//===----------------------------------------------------------------------===//
// quantizeFp8Blocks
//===----------------------------------------------------------------------===//

/// Independent scale: amax / 448 in fp32, pow2 via log2 in double.
float referenceScale(float amax, bool pow2) {
  if (amax == 0.0f)
    return 1.0f;
  float s = amax / 448.0f;
  return pow2 ? static_cast<float>(std::exp2(std::ceil(std::log2(double(s)))))
              : s;
}

struct QuantCase {
  FloatFormat format;
  int64_t matrices, rows, cols, blockRows, blockCols;
  bool pow2;
};

/// Source bytes of `values` in `format` and the values they hold exactly.
std::vector<std::byte> encodeSource(std::vector<float> &values,
                                    FloatFormat format) {
  size_t bytes = format == FloatFormat::F32 ? 4 : 2;
  std::vector<std::byte> out(values.size() * bytes);
  for (size_t i = 0; i < values.size(); ++i) {
    if (format == FloatFormat::F32) {
      std::memcpy(&out[i * 4], &values[i], 4);
      continue;
    }
    uint16_t h = format == FloatFormat::BF16 ? floatToBf16(values[i])
                                             : floatToF16(values[i]);
    values[i] = format == FloatFormat::BF16 ? bf16ToFloat(h) : f16ToFloat(h);
    std::memcpy(&out[i * 2], &h, 2);
  }
  return out;
}

TEST(Fp8Quantize, BlocksMatchReference) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (QuantCase c :
       {QuantCase{FloatFormat::F32, 1, 256, 256, 128, 128, false},
        QuantCase{FloatFormat::BF16, 2, 130, 300, 128, 128, false},
        QuantCase{FloatFormat::F16, 3, 37, 45, 16, 8, true},
        QuantCase{FloatFormat::BF16, 1, 200, 129, 128, 128, true},
        QuantCase{FloatFormat::F32, 2, 9, 7, 4, 3, false}}) {
    SCOPED_TRACE(testing::Message()
                 << "format " << int(c.format) << " " << c.matrices << "x"
                 << c.rows << "x" << c.cols << " blocks " << c.blockRows << "x"
                 << c.blockCols << " pow2 " << c.pow2);
    int64_t n = c.matrices * c.rows * c.cols;
    int64_t br = (c.rows + c.blockRows - 1) / c.blockRows;
    int64_t bc = (c.cols + c.blockCols - 1) / c.blockCols;
    std::vector<float> values(n);
    for (int64_t i = 0; i < n; ++i) {
      int64_t m = i / (c.rows * c.cols), r = i / c.cols % c.rows,
              col = i % c.cols;
      // Block-dependent magnitudes (so a scale from the wrong block shows),
      // one all-zero block per matrix, and some tiny values in the f16
      // range that become e4m3 subnormals.
      int64_t block = (m * br + r / c.blockRows) * bc + col / c.blockCols;
      float magnitude = std::ldexp(1.0f, static_cast<int>(block % 11) - 5);
      values[i] = block % 5 == 1 ? 0.0f : normal(rng) * magnitude;
      if (i % 13 == 0)
        values[i] *= 1e-3f;
    }
    std::vector<std::byte> source = encodeSource(values, c.format);
    std::vector<uint8_t> codes(n, 0xaa);
    std::vector<float> scales(c.matrices * br * bc, -1.0f);
    Fp8BlockQuant q{c.blockRows, c.blockCols, c.pow2};
    quantizeFp8Blocks(q, source.data(), c.format, c.matrices, c.rows, c.cols,
                      codes.data(), scales.data());

    std::vector<float> amax(scales.size(), 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      int64_t m = i / (c.rows * c.cols), r = i / c.cols % c.rows,
              col = i % c.cols;
      float &a = amax[(m * br + r / c.blockRows) * bc + col / c.blockCols];
      a = std::max(a, std::fabs(values[i]));
    }
    for (size_t b = 0; b < scales.size(); ++b)
      ASSERT_EQ(scales[b], referenceScale(amax[b], c.pow2)) << "block " << b;
    for (int64_t i = 0; i < n; ++i) {
      int64_t m = i / (c.rows * c.cols), r = i / c.cols % c.rows,
              col = i % c.cols;
      int64_t b = (m * br + r / c.blockRows) * bc + col / c.blockCols;
      float s = referenceScale(amax[b], c.pow2);
      ASSERT_EQ(codes[i], floatToE4m3(values[i] / s)) << "element " << i;
      // The point of it all: code * scale is the value to e4m3 precision
      // (relative 2^-4 for normals, half the 2^-9 subnormal step below).
      double error = std::fabs(double(e4m3ToFloat(codes[i])) * s - values[i]);
      ASSERT_LE(error, std::max(std::fabs(values[i]) * 0x1p-4, s * 0x1p-10) *
                           (1 + 1e-6))
          << "element " << i;
    }

    std::vector<uint8_t> codesOnly(n);
    quantizeFp8Blocks(q, source.data(), c.format, c.matrices, c.rows, c.cols,
                      codesOnly.data(), nullptr);
    EXPECT_EQ(codesOnly, codes);
    std::vector<float> scalesOnly(scales.size());
    quantizeFp8Blocks(q, source.data(), c.format, c.matrices, c.rows, c.cols,
                      nullptr, scalesOnly.data());
    EXPECT_EQ(scalesOnly, scales);
  }
}

} // namespace

//===----------------------------------------------------------------------===//
// FP8 GEMM kernels
//===----------------------------------------------------------------------===//

namespace cpu {
namespace {

/// forEachIsa, and again with AVX2 but not AVX-512 where the CPU has both
/// (the FP8 tiles differ).
template <typename F> void forEachFp8Isa(F body) {
  setAvx512Kernels(true);
  forEachIsa(body);
  setVectorKernels(true);
  if (avx512KernelsActive()) {
    setAvx512Kernels(false);
    SCOPED_TRACE("avx2 without avx512");
    body();
    setAvx512Kernels(true);
  }
}

/// Activations quantized as DeepSeek-V3 does, computed here on their own:
/// values [rows, in] (code values) and scales [rows, nkb].
struct QuantizedRows {
  std::vector<float> values, scales;
};

QuantizedRows quantizeRows(const std::vector<float> &x, int64_t rows,
                           int64_t in, int64_t bc, bool pow2) {
  int64_t nkb = (in + bc - 1) / bc;
  QuantizedRows q{std::vector<float>(x.size()), std::vector<float>(rows * nkb)};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t kb = 0; kb < nkb; ++kb) {
      int64_t k0 = kb * bc, k1 = std::min(in, k0 + bc);
      float amax = 0;
      for (int64_t k = k0; k < k1; ++k)
        amax = std::max(amax, std::fabs(x[r * in + k]));
      float s = std::max(amax, 1e-4f) / 448.0f;
      if (pow2)
        s = static_cast<float>(std::exp2(std::ceil(std::log2(double(s)))));
      q.scales[r * nkb + kb] = s;
      for (int64_t k = k0; k < k1; ++k)
        q.values[r * in + k] = e4m3ToFloat(floatToE4m3(x[r * in + k] / s));
    }
  return q;
}

/// One FP8 matrix [out, in] with its block scales.
struct Fp8Matrix {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
};

/// Random codes (no NaNs) with random block scales.
Fp8Matrix randomMatrix(std::mt19937 &rng, int64_t matrices, int64_t out,
                       int64_t in, int64_t br, int64_t bc) {
  Fp8Matrix m;
  std::uniform_int_distribution<int> byte(0, 255);
  for (int64_t i = 0; i < matrices * out * in; ++i) {
    int c = byte(rng);
    m.codes.push_back(static_cast<uint8_t>((c & 0x7f) == 0x7f ? c - 1 : c));
  }
  std::uniform_real_distribution<float> unit(0.5f, 2.0f);
  int64_t blocks = matrices * ((out + br - 1) / br) * ((in + bc - 1) / bc);
  for (int64_t b = 0; b < blocks; ++b)
    m.scales.push_back(std::ldexp(unit(rng), static_cast<int>(b % 7) - 12));
  return m;
}

struct Expected {
  double value, bound;
};

/// Reference for rows of quantized activations times matrix `m` of the
/// weights: per K block the exact sum of code products (double) times both
/// scales. The bound covers the kernel's fp32 arithmetic: every term passes
/// through at most bc + nkb + 8 roundings of relative 2^-24 (lane sums in
/// the block, the scale products, the sum over blocks, the final lane
/// reduction), so |error| <= (bc + nkb + 8) 2^-24 sum |terms| (to first
/// order; the factor 2 covers the rest).
Expected reference(const QuantizedRows &q, int64_t row, const Fp8Matrix &w,
                   int64_t m, int64_t o, int64_t out, int64_t in, int64_t br,
                   int64_t bc) {
  int64_t nkb = (in + bc - 1) / bc, nbr = (out + br - 1) / br;
  double sum = 0, magnitude = 0;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    double part = 0, partAbs = 0;
    for (int64_t k = kb * bc; k < std::min(in, (kb + 1) * bc); ++k) {
      double p = double(q.values[row * in + k]) *
                 e4m3ToFloat(w.codes[(m * out + o) * in + k]);
      part += p;
      partAbs += std::fabs(p);
    }
    double s = double(q.scales[row * nkb + kb]) *
               w.scales[(m * nbr + o / br) * nkb + kb];
    sum += part * s;
    magnitude += partAbs * s;
  }
  return {sum, 2.0 * double(bc + nkb + 8) * 0x1p-24 * magnitude};
}

std::vector<float> randomActivations(std::mt19937 &rng, int64_t n) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i)
    x[i] = normal(rng) * (i % 17 == 0 ? 30.0f : 1.0f) *
           (i % 29 == 0 ? 1e-5f : 1.0f);
  return x;
}

struct Shape {
  int64_t in, out, br, bc;
};

const Shape kShapes[] = {
    {256, 40, 128, 128},  // whole K blocks, partial output block
    {300, 131, 128, 128}, // partial K and output blocks
    {100, 19, 16, 20},    // K blocks of 20 (tails after the vector part)
    {37, 9, 4, 5},        // blocks narrower than a vector
    {1408, 70, 128, 128},
};

TEST(Fp8Linear, MatchesReference) {
  std::mt19937 rng(11);
  for (Shape s : kShapes)
    for (bool pow2 : {false, true})
      for (int64_t rows = 1; rows <= 9; ++rows) {
        SCOPED_TRACE(testing::Message()
                     << "in " << s.in << " out " << s.out << " blocks " << s.br
                     << "x" << s.bc << " rows " << rows << " pow2 " << pow2);
        Fp8Matrix w = randomMatrix(rng, 1, s.out, s.in, s.br, s.bc);
        std::vector<float> x = randomActivations(rng, rows * s.in);
        std::vector<uint16_t> bias(s.out);
        for (int64_t o = 0; o < s.out; ++o)
          bias[o] = floatToBf16(0.25f * static_cast<float>(o % 5));
        QuantizedRows q = quantizeRows(x, rows, s.in, s.bc, pow2);
        std::vector<float> scratch(fp8ActivationScratch(rows, s.in, s.bc));
        Weight weight{w.codes.data(), ElementType::F8E4M3, w.scales.data(),
                      s.br, s.bc};
        forEachFp8Isa([&] {
          std::vector<float> y(rows * s.out, -1.0f);
          linear(x.data(), rows, s.in, weight, s.out,
                 Weight{bias.data(), ElementType::BF16}, y.data(),
                 {scratch.data(), pow2});
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t o = 0; o < s.out; ++o) {
              Expected e = reference(q, r, w, 0, o, s.out, s.in, s.br, s.bc);
              double b = bf16ToFloat(bias[o]);
              ASSERT_NEAR(y[r * s.out + o], e.value + b,
                          e.bound + std::fabs(e.value + b) * 0x1p-24)
                  << "row " << r << " output " << o;
            }
        });
      }
}

TEST(Fp8Linear, NanCodePoisonsItsOutput) {
  std::mt19937 rng(3);
  // The partial K block [128, 203) runs 32 wide to 192, 8 wide to 200 and
  // one by one after that.
  int64_t in = 203, out = 12, rows = 3;
  Fp8Matrix w = randomMatrix(rng, 1, out, in, 128, 128);
  w.codes[9 * in + 3] = 0x7f;
  w.codes[5 * in + 150] = 0xff; // -NaN
  w.codes[2 * in + 196] = 0x7f;
  w.codes[11 * in + 202] = 0xff;
  std::vector<float> x = randomActivations(rng, rows * in);
  std::vector<float> scratch(fp8ActivationScratch(rows, in, 128));
  forEachFp8Isa([&] {
    std::vector<float> y(rows * out);
    linear(
        x.data(), rows, in,
        Weight{w.codes.data(), ElementType::F8E4M3, w.scales.data(), 128, 128},
        out, Weight{}, y.data(), {scratch.data(), false});
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o)
        EXPECT_EQ(std::isnan(y[r * out + o]),
                  o == 2 || o == 5 || o == 9 || o == 11)
            << r << " " << o;
  });
}

/// End to end against the unquantized product: fp32 weights through
/// quantizeFp8Blocks, fp32 activations through the kernel's quantization.
/// Each factor is off by at most 2^-4 of itself (normals) or half a
/// subnormal step (2^-10 of its scale), which bounds the product's error.
TEST(Fp8Linear, WithinE4m3OfUnquantized) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int64_t in = 333, out = 45;
  for (bool pow2 : {false, true})
    for (int64_t rows : {1, 4, 8}) {
      std::vector<float> wf(out * in);
      for (float &v : wf)
        v = normal(rng) * 0.05f;
      std::vector<uint8_t> codes(out * in);
      std::vector<float> scales(((out + 127) / 128) * ((in + 127) / 128));
      quantizeFp8Blocks(
          {128, 128, pow2}, reinterpret_cast<const std::byte *>(wf.data()),
          FloatFormat::F32, 1, out, in, codes.data(), scales.data());
      std::vector<float> x = randomActivations(rng, rows * in);
      QuantizedRows q = quantizeRows(x, rows, in, 128, pow2);
      std::vector<float> scratch(fp8ActivationScratch(rows, in, 128));
      std::vector<float> y(rows * out);
      linear(x.data(), rows, in,
             Weight{codes.data(), ElementType::F8E4M3, scales.data(), 128, 128},
             out, Weight{}, y.data(), {scratch.data(), pow2});
      int64_t nkb = (in + 127) / 128;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t o = 0; o < out; ++o) {
          double exact = 0, bound = 0;
          for (int64_t k = 0; k < in; ++k) {
            double xv = x[r * in + k], wv = wf[o * in + k];
            double ex = std::max(std::fabs(xv) * 0x1p-4,
                                 q.scales[r * nkb + k / 128] * 0x1p-10);
            double ew =
                std::max(std::fabs(wv) * 0x1p-4, scales[k / 128] * 0x1p-10);
            exact += xv * wv;
            bound += std::fabs(xv) * ew + ex * std::fabs(wv) + ex * ew;
          }
          ASSERT_NEAR(y[r * out + o], exact, bound * 1.001 + 1e-6)
              << "rows " << rows << " pow2 " << pow2;
        }
    }
}

TEST(Fp8GroupedLinear, MatchesReference) {
  std::mt19937 rng(13);
  for (Shape s : {Shape{300, 70, 32, 128}, Shape{96, 33, 128, 32}})
    for (bool pow2 : {false, true}) {
      int64_t experts = 4;
      std::vector<int32_t> offsets = {0, 3, 3, 12, 13}; // expert 1 is empty
      int64_t rows = offsets[experts];
      Fp8Matrix w = randomMatrix(rng, experts, s.out, s.in, s.br, s.bc);
      std::vector<float> x = randomActivations(rng, rows * s.in);
      QuantizedRows q = quantizeRows(x, rows, s.in, s.bc, pow2);
      std::vector<float> scratch(fp8ActivationScratch(rows, s.in, s.bc));
      forEachFp8Isa([&] {
        std::vector<float> y(rows * s.out, -1.0f);
        groupedLinear(x.data(), s.in,
                      Weight{w.codes.data(), ElementType::F8E4M3,
                             w.scales.data(), s.br, s.bc},
                      experts, s.out, offsets.data(), y.data(),
                      {scratch.data(), pow2});
        for (int64_t e = 0; e < experts; ++e)
          for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
            for (int64_t o = 0; o < s.out; ++o) {
              Expected ex = reference(q, r, w, e, o, s.out, s.in, s.br, s.bc);
              ASSERT_NEAR(y[r * s.out + o], ex.value, ex.bound)
                  << "expert " << e << " row " << r << " output " << o;
            }
      });
    }
}

TEST(Fp8HeadLinear, MatchesReference) {
  std::mt19937 rng(17);
  int64_t heads = 3, in = 160, out = 50, br = 32, bc = 64;
  for (int64_t rows : {1, 5}) {
    Fp8Matrix w = randomMatrix(rng, heads, out, in, br, bc);
    std::vector<float> x = randomActivations(rng, rows * heads * in);
    // Rows of x [rows, heads, in] are the rows * heads rows of `in`.
    QuantizedRows q = quantizeRows(x, rows * heads, in, bc, false);
    std::vector<float> scratch(headLinearScratch(rows, in, out));
    std::vector<float> act(fp8ActivationScratch(rows * heads, in, bc));
    forEachFp8Isa([&] {
      std::vector<float> y(rows * heads * out, -1.0f);
      headLinear(
          x.data(), rows, heads, in,
          Weight{w.codes.data(), ElementType::F8E4M3, w.scales.data(), br, bc},
          out, y.data(), scratch.data(), {act.data(), false});
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t o = 0; o < out; ++o) {
            Expected e = reference(q, r * heads + h, w, h, o, out, in, br, bc);
            ASSERT_NEAR(y[(r * heads + h) * out + o], e.value, e.bound)
                << "row " << r << " head " << h << " output " << o;
          }
    });
  }
}

} // namespace
} // namespace cpu
} // namespace kiln
