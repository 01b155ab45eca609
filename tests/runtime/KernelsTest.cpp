// Every CPU kernel against a naive double-precision reference written here
// independently, on odd sizes and on fp32/bf16/f16 weights.
//
// Tolerances: kernels accumulate in fp32, so a dot product of n terms is off
// by at most about n * 2^-24 * sum|x_i w_i| (and in practice sqrt(n) times
// less). The references see exactly the fp32 values the kernels see (bf16 and
// f16 weights are rounded once, here, and converted exactly), so the only
// error left is fp32 arithmetic: 1e-5 relative to the magnitude of the sum
// covers n up to a few hundred with margin and still catches any wrong term.
#include "runtime/src/cpu/Kernels.h"
#include "tests/runtime/ForEachIsa.h"

#include "kiln/Float.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>
#include <random>
#include <span>
#include <vector>

namespace kiln::cpu {
namespace {

constexpr double kRel = 1e-5;

std::vector<float> randomFloats(std::mt19937 &rng, size_t n, float lo = -1.0f,
                                float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

/// A weight in a given dtype plus the exact values it holds.
struct TestWeight {
  ElementType type = ElementType::F32;
  std::vector<float> f32;     // storage for F32
  std::vector<uint16_t> bits; // storage for BF16/F16
  std::vector<double> value;  // what each element is worth

  TestWeight() = default;
  TestWeight(ElementType t, const std::vector<float> &v) : type(t) {
    for (float x : v) {
      if (t == ElementType::F32) {
        f32.push_back(x);
        value.push_back(x);
      } else if (t == ElementType::BF16) {
        bits.push_back(floatToBf16(x));
        value.push_back(bf16ToFloat(bits.back()));
      } else {
        bits.push_back(floatToF16(x));
        value.push_back(f16ToFloat(bits.back()));
      }
    }
  }
  Weight weight() const {
    if (type == ElementType::F32)
      return {f32.data(), type};
    return {bits.data(), type};
  }
};

const ElementType kWeightTypes[] = {ElementType::F32, ElementType::BF16,
                                    ElementType::F16};

const char *typeName(ElementType t) {
  switch (t) {
  case ElementType::F32:
    return "f32";
  case ElementType::BF16:
    return "bf16";
  case ElementType::F16:
    return "f16";
  default:
    return "?";
  }
}

//===----------------------------------------------------------------------===//
// linear / groupedLinear
//===----------------------------------------------------------------------===//

void referenceLinear(const std::vector<float> &x, int64_t rows, int64_t in,
                     const TestWeight &w, int64_t out, const TestWeight *bias,
                     int64_t wOffset, std::vector<double> &y,
                     std::vector<double> &magnitude) {
  y.assign(rows * out, 0.0);
  magnitude.assign(rows * out, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0, m = 0;
      for (int64_t i = 0; i < in; ++i) {
        double t =
            static_cast<double>(x[r * in + i]) * w.value[wOffset + o * in + i];
        s += t;
        m += std::abs(t);
      }
      if (bias) {
        s += bias->value[o];
        m += std::abs(bias->value[o]);
      }
      y[r * out + o] = s;
      magnitude[r * out + o] = m;
    }
}

struct LinearShape {
  int64_t rows, in, out;
};

/// linear on every shape, weight type and with/without bias, on every ISA
/// path, against the double-precision reference.
void expectLinearMatchesReference(std::span<const LinearShape> shapes,
                                  unsigned seed) {
  std::mt19937 rng(seed);
  for (LinearShape s : shapes)
    for (ElementType type : kWeightTypes)
      for (bool withBias : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << "rows=" << s.rows << " in=" << s.in << " out=" << s.out
                     << " " << typeName(type) << " bias=" << withBias);
        std::vector<float> x = randomFloats(rng, s.rows * s.in);
        TestWeight w(type, randomFloats(rng, s.out * s.in));
        TestWeight b(type == ElementType::F32 ? ElementType::BF16 : type,
                     randomFloats(rng, s.out));
        std::vector<double> ref, mag;
        referenceLinear(x, s.rows, s.in, w, s.out, withBias ? &b : nullptr, 0,
                        ref, mag);
        forEachIsa([&] {
          std::vector<float> y(s.rows * s.out, -7.0f);
          linear(x.data(), s.rows, s.in, w.weight(), s.out,
                 withBias ? b.weight() : Weight{}, y.data());
          for (size_t i = 0; i < y.size(); ++i)
            ASSERT_NEAR(y[i], ref[i], kRel * mag[i] + 1e-30) << "at " << i;
        });
      }
}

TEST(Kernels, LinearMatchesReference) {
  const LinearShape shapes[] = {
      {3, 37, 29}, {1, 37, 29}, {1, 1, 1},     {2, 7, 5},      {8, 64, 50},
      {5, 16, 33}, {9, 41, 7},  {13, 100, 31}, {37, 300, 101}, {4, 520, 19}};
  expectLinearMatchesReference(shapes, 1);
}

TEST(Kernels, GroupedLinearMatchesReference) {
  std::mt19937 rng(2);
  const int64_t experts = 6, in = 37, out = 29;
  // Expert 0 and 4 get no rows; expert 3 gets enough for the GEMM path.
  const std::vector<int32_t> offsets = {0, 0, 3, 4, 17, 17, 19};
  int64_t rows = offsets.back();
  std::vector<float> x = randomFloats(rng, rows * in);
  for (ElementType type : kWeightTypes) {
    SCOPED_TRACE(typeName(type));
    TestWeight w(type, randomFloats(rng, experts * out * in));
    forEachIsa([&] {
      std::vector<float> y(rows * out, -7.0f);
      groupedLinear(x.data(), in, w.weight(), experts, out, offsets.data(),
                    y.data());
      for (int64_t e = 0; e < experts; ++e) {
        int64_t begin = offsets[e], n = offsets[e + 1] - begin;
        if (n == 0)
          continue;
        std::vector<float> xe(x.begin() + begin * in,
                              x.begin() + (begin + n) * in);
        std::vector<double> ref, mag;
        referenceLinear(xe, n, in, w, out, nullptr, e * out * in, ref, mag);
        for (int64_t i = 0; i < n * out; ++i)
          ASSERT_NEAR(y[begin * out + i], ref[i], kRel * mag[i])
              << "expert " << e << " at " << i;
      }
    });
  }
}

// Enough rows for the packed GEMM (40 or more): row counts that leave partial
// micro-tiles of 6 and 12 rows, outputs that leave partial 16-wide panels and
// 256-wide blocks, `in` beyond one 256-wide K chunk and not a multiple of 8,
// and a narrow matrix whose rows are split between threads.
TEST(Kernels, LinearGemmMatchesReference) {
  const LinearShape shapes[] = {{40, 37, 29}, {41, 300, 131}, {77, 520, 150},
                                {130, 8, 17}, {53, 1031, 40}, {96, 256, 256},
                                {200, 64, 3}, {45, 2500, 20}, {50, 130, 530}};
  expectLinearMatchesReference(shapes, 3);
}

// Experts on both sides of the packed GEMM's row threshold, and empty ones
// between them.
TEST(Kernels, GroupedLinearGemmMatchesReference) {
  std::mt19937 rng(4);
  const int64_t experts = 7, in = 300, out = 150;
  const std::vector<int32_t> offsets = {0, 0, 45, 46, 46, 143, 182, 182};
  int64_t rows = offsets.back();
  std::vector<float> x = randomFloats(rng, rows * in);
  for (ElementType type : kWeightTypes) {
    SCOPED_TRACE(typeName(type));
    TestWeight w(type, randomFloats(rng, experts * out * in));
    forEachIsa([&] {
      std::vector<float> y(rows * out, -7.0f);
      groupedLinear(x.data(), in, w.weight(), experts, out, offsets.data(),
                    y.data());
      for (int64_t e = 0; e < experts; ++e) {
        int64_t begin = offsets[e], n = offsets[e + 1] - begin;
        if (n == 0)
          continue;
        std::vector<float> xe(x.begin() + begin * in,
                              x.begin() + (begin + n) * in);
        std::vector<double> ref, mag;
        referenceLinear(xe, n, in, w, out, nullptr, e * out * in, ref, mag);
        for (int64_t i = 0; i < n * out; ++i)
          ASSERT_NEAR(y[begin * out + i], ref[i], kRel * mag[i])
              << "expert " << e << " at " << i;
      }
    });
  }
}

//===----------------------------------------------------------------------===//
// Element-wise and data movement
//===----------------------------------------------------------------------===//

TEST(Kernels, EmbeddingCopiesConvertedRows) {
  std::mt19937 rng(3);
  const int64_t vocab = 11, dim = 37;
  const std::vector<int32_t> tokens = {3, 0, 10, 3, 7};
  for (ElementType type : kWeightTypes) {
    SCOPED_TRACE(typeName(type));
    TestWeight table(type, randomFloats(rng, vocab * dim, -4, 4));
    std::vector<float> out(tokens.size() * dim);
    embedding(tokens.data(), static_cast<int64_t>(tokens.size()),
              table.weight(), dim, out.data());
    for (size_t t = 0; t < tokens.size(); ++t)
      for (int64_t i = 0; i < dim; ++i)
        ASSERT_EQ(out[t * dim + i], table.value[tokens[t] * dim + i]);
  }
}

TEST(Kernels, RmsNormMatchesReference) {
  std::mt19937 rng(4);
  const int64_t rows = 3, dim = 37;
  const float eps = 1e-6f;
  std::vector<float> x = randomFloats(rng, rows * dim, -3, 3);
  for (ElementType type : kWeightTypes) {
    SCOPED_TRACE(typeName(type));
    TestWeight w(type, randomFloats(rng, dim, 0.5f, 1.5f));
    std::vector<float> out(rows * dim);
    rmsNorm(x.data(), rows, dim, w.weight(), eps, out.data());
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i)
        ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
      double inv = 1.0 / std::sqrt(ss / dim + eps);
      for (int64_t i = 0; i < dim; ++i) {
        double ref = x[r * dim + i] * inv * w.value[i];
        ASSERT_NEAR(out[r * dim + i], ref, kRel * std::abs(ref) + 1e-7);
      }
    }
  }
}

TEST(Kernels, AddAndSwiglu) {
  std::mt19937 rng(5);
  const int64_t n = 1037;
  std::vector<float> a = randomFloats(rng, n, -8, 8), b = randomFloats(rng, n);
  std::vector<float> out(n);
  add(a.data(), b.data(), n, out.data());
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(out[i], a[i] + b[i]);
  swiglu(a.data(), b.data(), n, out.data());
  for (int64_t i = 0; i < n; ++i) {
    double g = a[i], ref = g / (1.0 + std::exp(-g)) * b[i];
    ASSERT_NEAR(out[i], ref, kRel * std::abs(ref) + 1e-7) << i;
  }
}

TEST(Kernels, SliceConcatBroadcast) {
  std::mt19937 rng(6);
  const int64_t rows = 3, inDim = 37;
  std::vector<float> x = randomFloats(rng, rows * inDim);
  std::vector<float> s(rows * 10);
  slice(x.data(), rows, inDim, 5, 10, s.data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < 10; ++i)
      ASSERT_EQ(s[r * 10 + i], x[r * inDim + 5 + i]);

  std::vector<float> a = randomFloats(rng, rows * 2),
                     b = randomFloats(rng, rows * 5),
                     c = randomFloats(rng, rows * 3);
  const float *inputs[] = {a.data(), b.data(), c.data()};
  const int64_t dims[] = {2, 5, 3};
  std::vector<float> cat(rows * 10);
  concat(inputs, dims, 3, rows, cat.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < 2; ++i)
      ASSERT_EQ(cat[r * 10 + i], a[r * 2 + i]);
    for (int64_t i = 0; i < 5; ++i)
      ASSERT_EQ(cat[r * 10 + 2 + i], b[r * 5 + i]);
    for (int64_t i = 0; i < 3; ++i)
      ASSERT_EQ(cat[r * 10 + 7 + i], c[r * 3 + i]);
  }

  std::vector<float> br(rows * 4 * 7);
  std::vector<float> src = randomFloats(rng, rows * 7);
  broadcast(src.data(), rows, 4, 7, br.data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < 4; ++j)
      for (int64_t i = 0; i < 7; ++i)
        ASSERT_EQ(br[(r * 4 + j) * 7 + i], src[r * 7 + i]);
}

//===----------------------------------------------------------------------===//
// RoPE
//===----------------------------------------------------------------------===//

/// The three schemes' inverse frequencies, from their definitions.
std::vector<double> referenceInvFreq(const RopeParams &p, int64_t dim) {
  std::vector<double> f(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i)
    f[i] = std::pow(p.theta, -2.0 * i / dim);
  if (p.kind == RopeKind::Yarn) {
    auto corrDim = [&](double rot) {
      return dim *
             std::log(p.originalMaxPosition / (rot * 2 * std::numbers::pi)) /
             (2 * std::log(p.theta));
    };
    double lo = std::max(0.0, std::floor(corrDim(p.betaFast)));
    double hi = std::min(dim - 1.0, std::ceil(corrDim(p.betaSlow)));
    if (lo == hi)
      hi += 0.001;
    for (int64_t i = 0; i < dim / 2; ++i) {
      double ramp = std::min(1.0, std::max(0.0, (i - lo) / (hi - lo)));
      // ramp 0: original frequency (extrapolation); 1: divided by factor.
      f[i] = f[i] * (1 - ramp) + f[i] / p.factor * ramp;
    }
  } else if (p.kind == RopeKind::Llama3) {
    double lowWave = p.originalMaxPosition / p.lowFreqFactor;
    double highWave = p.originalMaxPosition / p.highFreqFactor;
    for (double &x : f) {
      double wave = 2 * std::numbers::pi / x;
      if (wave > lowWave)
        x /= p.factor;
      else if (wave >= highWave) {
        double smooth = (p.originalMaxPosition / wave - p.lowFreqFactor) /
                        (p.highFreqFactor - p.lowFreqFactor);
        x = (1 - smooth) * x / p.factor + smooth * x;
      }
    }
  }
  return f;
}

double referenceAttentionFactor(const RopeParams &p) {
  if (p.kind != RopeKind::Yarn || p.factor <= 1)
    return 1.0;
  auto m = [&](double s) { return 0.1 * s * std::log(p.factor) + 1.0; };
  if (p.mscale != 0 && p.mscaleAllDim != 0)
    return m(p.mscale) / m(p.mscaleAllDim);
  return m(1.0);
}

RopeParams yarnParams() {
  RopeParams p;
  p.kind = RopeKind::Yarn;
  p.theta = 10000.0;
  p.factor = 40.0;
  p.originalMaxPosition = 4096;
  p.betaFast = 32;
  p.betaSlow = 1;
  p.mscale = 1.0;
  p.mscaleAllDim = 0.8;
  return p;
}

RopeParams llama3Params() {
  RopeParams p;
  p.kind = RopeKind::Llama3;
  p.theta = 500000.0;
  p.factor = 8.0;
  p.originalMaxPosition = 8192;
  p.lowFreqFactor = 1.0;
  p.highFreqFactor = 4.0;
  return p;
}

TEST(Kernels, RopeInverseFrequenciesByHand) {
  RopeParams plain; // theta 10000, dim 8: 10000^(-2i/8) = 10^-i
  std::vector<double> f(4);
  ropeInverseFrequencies(plain, 8, f.data());
  const double expected[] = {1.0, 0.1, 0.01, 0.001};
  for (int i = 0; i < 4; ++i)
    EXPECT_NEAR(f[i], expected[i], 1e-15 * expected[i]) << i;
  EXPECT_EQ(ropeAttentionFactor(plain), 1.0);
}

TEST(Kernels, RopeInverseFrequenciesMatchTransformers) {
  // Values printed by transformers 5.23's _compute_yarn_parameters and
  // _compute_llama3_parameters (fp32 tensors, hence the 1e-6 tolerance).
  RopeParams yarn = yarnParams();
  std::vector<double> f(8);
  ropeInverseFrequencies(yarn, 16, f.data());
  const double yarnHf[] = {1.000000000e+00, 3.162277639e-01, 1.000000015e-01,
                           2.391472459e-02, 5.124999676e-03, 8.498621755e-04,
                           2.499999937e-05, 7.905694474e-06};
  for (int i = 0; i < 8; ++i)
    EXPECT_NEAR(f[i], yarnHf[i], 1e-6 * yarnHf[i]) << i;
  EXPECT_NEAR(ropeAttentionFactor(yarn), 1.0569662567531275, 1e-15);
  yarn.mscale = yarn.mscaleAllDim = 0.707; // DeepSeek-V2-Lite: ratio 1
  EXPECT_DOUBLE_EQ(ropeAttentionFactor(yarn), 1.0);
  yarn.mscaleAllDim = 0.0; // HF falls back to get_mscale(factor)
  EXPECT_DOUBLE_EQ(ropeAttentionFactor(yarn), 0.1 * std::log(40.0) + 1.0);

  std::vector<double> g(16);
  ropeInverseFrequencies(llama3Params(), 32, g.data());
  const double llamaHf[] = {
      1.000000000e+00, 4.403666258e-01, 1.939227581e-01, 8.539710194e-02,
      3.760603070e-02, 1.656044088e-02, 7.292665076e-03, 3.211446106e-03,
      5.248460220e-04, 7.784655463e-05, 3.428102355e-05, 1.509621779e-05,
      6.647869668e-06, 2.927499736e-06, 1.289173156e-06, 5.677088097e-07};
  for (int i = 0; i < 16; ++i)
    EXPECT_NEAR(g[i], llamaHf[i], 1e-6 * llamaHf[i]) << i;
  EXPECT_EQ(ropeAttentionFactor(llama3Params()), 1.0);
}

TEST(Kernels, RopeMatchesReference) {
  std::mt19937 rng(7);
  const int64_t heads = 3, dim = 64;
  const std::vector<int32_t> positions = {0, 1, 4095, 4096, 65535, 131071, -1};
  const int64_t tokens = static_cast<int64_t>(positions.size());
  std::vector<float> x = randomFloats(rng, tokens * heads * dim, -2, 2);
  RopeParams plain;
  plain.theta = 1000000.0;
  for (RopeParams p : {plain, yarnParams(), llama3Params()})
    for (bool interleaved : {false, true}) {
      p.interleaved = interleaved;
      SCOPED_TRACE(testing::Message() << "kind " << static_cast<int>(p.kind)
                                      << " interleaved " << interleaved);
      std::vector<double> f = referenceInvFreq(p, dim);
      std::vector<double> mine(dim / 2);
      ropeInverseFrequencies(p, dim, mine.data());
      for (int64_t i = 0; i < dim / 2; ++i)
        ASSERT_NEAR(mine[i], f[i], 1e-14 * f[i]);
      double af = referenceAttentionFactor(p);
      ASSERT_NEAR(ropeAttentionFactor(p), af, 1e-15);
      std::vector<float> out(x.size());
      rope(x.data(), positions.data(), tokens, heads, dim, p, out.data());
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t h = 0; h < heads; ++h) {
          const float *xh = x.data() + (t * heads + h) * dim;
          const float *oh = out.data() + (t * heads + h) * dim;
          if (positions[t] < 0) {
            for (int64_t i = 0; i < dim; ++i)
              ASSERT_EQ(oh[i], xh[i]);
            continue;
          }
          for (int64_t i = 0; i < dim / 2; ++i) {
            int64_t ia = interleaved ? 2 * i : i;
            int64_t ib = interleaved ? 2 * i + 1 : i + dim / 2;
            double angle = positions[t] * f[i];
            double c = std::cos(angle) * af, s = std::sin(angle) * af;
            double a = xh[ia], b = xh[ib];
            double ra = a * c - b * s, rb = b * c + a * s;
            double tol = 1e-6 * (std::abs(a) + std::abs(b)) * af;
            ASSERT_NEAR(oh[ia], ra, tol) << "t " << t << " i " << i;
            ASSERT_NEAR(oh[ib], rb, tol) << "t " << t << " i " << i;
          }
        }
    }
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

struct AttentionCase {
  int64_t batch, seq, heads, kvHeads, dk, dv, maxTokens;
  std::vector<int32_t> positions, kvLengths;
};

void checkAttention(const AttentionCase &c, uint32_t seed) {
  std::mt19937 rng(seed);
  int64_t kStride = c.maxTokens * c.kvHeads * c.dk;
  int64_t vStride = c.maxTokens * c.kvHeads * c.dv;
  std::vector<float> q = randomFloats(rng, c.batch * c.seq * c.heads * c.dk);
  std::vector<float> k = randomFloats(rng, c.batch * kStride);
  std::vector<float> v = randomFloats(rng, c.batch * vStride);
  float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dk)));
  std::vector<double> ref(c.batch * c.seq * c.heads * c.dv, 0.0);
  int64_t group = c.heads / c.kvHeads;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t s = 0; s < c.seq; ++s)
      for (int64_t h = 0; h < c.heads; ++h) {
        int64_t pos = c.positions[b * c.seq + s];
        int64_t kvh = h / group;
        double *o = ref.data() + ((b * c.seq + s) * c.heads + h) * c.dv;
        std::vector<double> score;
        for (int64_t j = 0; j <= pos && j < c.kvLengths[b]; ++j) {
          double d = 0;
          for (int64_t i = 0; i < c.dk; ++i)
            d += static_cast<double>(
                     q[((b * c.seq + s) * c.heads + h) * c.dk + i]) *
                 k[b * kStride + (j * c.kvHeads + kvh) * c.dk + i];
          score.push_back(d * scale);
        }
        if (score.empty())
          continue;
        double mx = *std::max_element(score.begin(), score.end()), sum = 0;
        for (double &x : score)
          sum += (x = std::exp(x - mx));
        for (size_t j = 0; j < score.size(); ++j)
          for (int64_t i = 0; i < c.dv; ++i)
            o[i] += score[j] / sum *
                    v[b * vStride + (j * c.kvHeads + kvh) * c.dv + i];
      }
  forEachIsa([&] {
    std::vector<float> out(ref.size(), -7.0f);
    attention(q.data(), k.data(), v.data(), c.positions.data(),
              c.kvLengths.data(), c.batch, c.seq, c.heads, c.kvHeads, c.dk,
              c.dv, kStride, vStride, scale, out.data());
    // Outputs are convex combinations of v (|v| <= 1): absolute tolerance.
    for (size_t i = 0; i < out.size(); ++i)
      ASSERT_NEAR(out[i], ref[i], 2e-6) << "at " << i;
  });
}

TEST(Kernels, AttentionGqa) {
  // 8 query heads over 2 kv heads; sequence 1 is a prefill continuing a
  // cache; sequence 0 has a padded query.
  checkAttention({2, 3, 8, 2, 16, 12, 10, {4, 5, -1, 0, 1, 2}, {6, 3}}, 8);
  // Decode-like, every head its own kv head, long enough for several key
  // blocks.
  checkAttention({1, 1, 3, 3, 37, 29, 200, {150}, {151}}, 9);
}

TEST(Kernels, AttentionMqaAbsorbedMla) {
  // kvHeads = 1, dk = 576, dv = 512, more heads than one work item holds,
  // more keys than one softmax block.
  checkAttention({1, 2, 20, 1, 576, 512, 80, {68, 69}, {70}}, 10);
}

TEST(Kernels, AttentionPaddingAndShortKvLengths) {
  // kvLengths shorter than positions + 1 cap the keys; negative positions
  // and empty caches give zeros.
  checkAttention({3, 2, 4, 2, 8, 8, 16, {9, 12, -1, -5, 3, 7}, {5, 16, 0}}, 11);
}

//===----------------------------------------------------------------------===//
// MoE
//===----------------------------------------------------------------------===//

/// Router logits equal to x: the gate weight is the identity.
struct GateCase {
  int64_t experts;
  std::vector<float> identity;
  explicit GateCase(int64_t e) : experts(e), identity(e * e, 0.0f) {
    for (int64_t i = 0; i < e; ++i)
      identity[i * e + i] = 1.0f;
  }
  void run(const std::vector<float> &logits, const MoeGateParams &p,
           const std::vector<float> &bias, std::vector<float> &weights,
           std::vector<int32_t> &indices) {
    int64_t tokens = static_cast<int64_t>(logits.size()) / experts;
    weights.assign(tokens * p.topK, -1.0f);
    indices.assign(tokens * p.topK, -1);
    std::vector<float> scratch(tokens * experts);
    moeGate(logits.data(), tokens, experts, {identity.data(), ElementType::F32},
            experts, {bias.empty() ? nullptr : bias.data(), ElementType::F32},
            p, weights.data(), indices.data(), scratch.data());
  }
};

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

TEST(Kernels, MoeGateGreedySoftmaxByHand) {
  GateCase g(4);
  MoeGateParams p;
  p.topK = 2;
  std::vector<float> w;
  std::vector<int32_t> idx;
  const std::vector<float> logits = {1, 3, 2, 0.5};
  double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + std::exp(0.5);
  g.run(logits, p, {}, w, idx);
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(w[0], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(w[1], std::exp(2.0) / z, 1e-6);

  p.normTopkProb = true;
  p.routedScalingFactor = 2.5;
  g.run(logits, p, {}, w, idx);
  double e3 = std::exp(3.0), e2 = std::exp(2.0);
  EXPECT_NEAR(w[0], 2.5 * e3 / (e3 + e2), 1e-6);
  EXPECT_NEAR(w[1], 2.5 * e2 / (e3 + e2), 1e-6);

  // Ties go to the lower expert index.
  p.normTopkProb = false;
  p.routedScalingFactor = 1.0;
  p.topK = 3;
  g.run({0.5, 2, 0.5, 2}, p, {}, w, idx);
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 3, 0}));
}

TEST(Kernels, MoeGateGroupLimitedGreedyByHand) {
  // 4 groups of 2; a group scores its best expert. Groups 0 (max 5) and 2
  // (max 4.5) win; group 1's experts (4.4) lose to expert 5 (score 0).
  GateCase g(8);
  MoeGateParams p;
  p.method = TopkMethod::GroupLimitedGreedy;
  p.topK = 3;
  p.nGroup = 4;
  p.topkGroup = 2;
  p.routedScalingFactor = 16.0;
  const std::vector<float> logits = {5, -10, 4.4f, 4.4f, 4.5f, 0, 0, 0};
  double z = 0;
  for (float l : logits)
    z += std::exp(static_cast<double>(l));
  std::vector<float> w;
  std::vector<int32_t> idx;
  g.run(logits, p, {}, w, idx);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 4, 5}));
  EXPECT_NEAR(w[0], 16 * std::exp(5.0) / z, 1e-5);
  EXPECT_NEAR(w[1], 16 * std::exp(4.5) / z, 1e-5);
  EXPECT_NEAR(w[2], 16 * std::exp(0.0) / z, 1e-6);

  // Plain greedy would take expert 2 third.
  p.method = TopkMethod::Greedy;
  g.run(logits, p, {}, w, idx);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 4, 2}));
}

TEST(Kernels, MoeGateNoauxTcByHand) {
  // Sigmoid scores; a group scores the sum of its two best biased scores:
  // group 0 has the best single expert (sigmoid 2 = .881) but sums to 1.612
  // < group 2's 1.620, so group 0 loses only because of the sum.
  GateCase g(8);
  MoeGateParams p;
  p.scoring = ScoringFunc::Sigmoid;
  p.method = TopkMethod::NoauxTc;
  p.topK = 2;
  p.nGroup = 4;
  p.topkGroup = 2;
  const std::vector<float> logits = {2, 1, 0, 0, 1.5f, 1.4f, -1, -1};
  std::vector<float> w;
  std::vector<int32_t> idx;

  // No bias: groups 2 (1.620) and 0 (1.612) are kept; experts 0 and 4.
  g.run(logits, p, std::vector<float>(8, 0.0f), w, idx);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 4}));
  EXPECT_NEAR(w[0], sigmoid(2), 1e-6);
  EXPECT_NEAR(w[1], sigmoid(1.5), 1e-6);

  // With one group kept, the sum rule keeps group 2 (a max rule would keep
  // group 0 and pick experts 0 and 1).
  p.topkGroup = 1;
  g.run(logits, p, std::vector<float>(8, 0.0f), w, idx);
  EXPECT_EQ(idx, (std::vector<int32_t>{4, 5}));
  EXPECT_NEAR(w[0], sigmoid(1.5), 1e-6);
  EXPECT_NEAR(w[1], sigmoid(1.4), 1e-6);
  p.topkGroup = 2;

  // A bias of +1 on experts 6 and 7 makes group 3 (2.538) and group 2 win
  // and selects 6 and 7, but their weights stay sigmoid(-1).
  std::vector<float> bias(8, 0.0f);
  bias[6] = bias[7] = 1.0f;
  g.run(logits, p, bias, w, idx);
  EXPECT_EQ(idx, (std::vector<int32_t>{6, 7}));
  EXPECT_NEAR(w[0], sigmoid(-1), 1e-6);
  EXPECT_NEAR(w[1], sigmoid(-1), 1e-6);

  // norm_topk_prob then routed_scaling_factor.
  p.normTopkProb = true;
  p.routedScalingFactor = 2.5;
  g.run(logits, p, bias, w, idx);
  EXPECT_NEAR(w[0], 1.25, 1e-6);
  EXPECT_NEAR(w[1], 1.25, 1e-6);
  g.run(logits, p, std::vector<float>(8, 0.0f), w, idx);
  double a = sigmoid(2), b = sigmoid(1.5);
  EXPECT_NEAR(w[0], 2.5 * a / (a + b), 1e-6);
  EXPECT_NEAR(w[1], 2.5 * b / (a + b), 1e-6);

  // A null bias is no bias.
  p.normTopkProb = false;
  p.routedScalingFactor = 1.0;
  g.run(logits, p, {}, w, idx);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 4}));
}

/// An independent router: sort (value desc, index asc), in double.
void referenceGate(const std::vector<double> &logits, int64_t experts,
                   const std::vector<double> &bias, const MoeGateParams &p,
                   std::vector<double> &weights, std::vector<int32_t> &idx) {
  std::vector<double> s(experts);
  if (p.scoring == ScoringFunc::Softmax) {
    double mx = *std::max_element(logits.begin(), logits.end()), z = 0;
    for (int64_t e = 0; e < experts; ++e)
      z += (s[e] = std::exp(logits[e] - mx));
    for (double &x : s)
      x /= z;
  } else {
    for (int64_t e = 0; e < experts; ++e)
      s[e] = sigmoid(logits[e]);
  }
  std::vector<double> choice = s;
  if (p.method == TopkMethod::NoauxTc)
    for (int64_t e = 0; e < experts; ++e)
      choice[e] += bias[e];
  auto order = [](const std::vector<double> &v) {
    std::vector<int32_t> o(v.size());
    std::iota(o.begin(), o.end(), 0);
    std::stable_sort(o.begin(), o.end(),
                     [&](int32_t a, int32_t b) { return v[a] > v[b]; });
    return o;
  };
  std::vector<bool> allowed(experts, true);
  if (p.method != TopkMethod::Greedy) {
    int64_t per = experts / p.nGroup;
    std::vector<double> gs(p.nGroup);
    for (int64_t gi = 0; gi < p.nGroup; ++gi) {
      std::vector<double> members(choice.begin() + gi * per,
                                  choice.begin() + (gi + 1) * per);
      std::sort(members.rbegin(), members.rend());
      gs[gi] = p.method == TopkMethod::GroupLimitedGreedy
                   ? members[0]
                   : members[0] + members[1];
    }
    std::vector<int32_t> go = order(gs);
    std::vector<bool> keepGroup(p.nGroup, false);
    for (int64_t j = 0; j < p.topkGroup; ++j)
      keepGroup[go[j]] = true;
    for (int64_t e = 0; e < experts; ++e)
      allowed[e] = keepGroup[e / per];
  }
  for (int64_t e = 0; e < experts; ++e)
    if (!allowed[e])
      choice[e] = -1e300;
  std::vector<int32_t> eo = order(choice);
  idx.assign(eo.begin(), eo.begin() + p.topK);
  weights.clear();
  double sum = 0;
  for (int32_t e : idx) {
    weights.push_back(s[e]);
    sum += s[e];
  }
  for (double &w : weights) {
    if (p.normTopkProb)
      w /= sum;
    w *= p.routedScalingFactor;
  }
}

TEST(Kernels, MoeGateRandomMatchesReference) {
  std::mt19937 rng(12);
  const int64_t tokens = 9, dim = 37, experts = 32;
  std::vector<float> x = randomFloats(rng, tokens * dim, -2, 2);
  std::vector<float> biasF = randomFloats(rng, experts, -0.1f, 0.1f);
  std::vector<double> biasD(biasF.begin(), biasF.end());
  struct Config {
    ScoringFunc scoring;
    TopkMethod method;
    bool norm;
  };
  const Config configs[] = {
      {ScoringFunc::Softmax, TopkMethod::Greedy, false},
      {ScoringFunc::Softmax, TopkMethod::GroupLimitedGreedy, false},
      {ScoringFunc::Softmax, TopkMethod::GroupLimitedGreedy, true},
      {ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true},
      {ScoringFunc::Sigmoid, TopkMethod::Greedy, true}};
  for (ElementType type : kWeightTypes)
    for (const Config &c : configs) {
      SCOPED_TRACE(testing::Message() << typeName(type) << " method "
                                      << static_cast<int>(c.method));
      TestWeight w(type, randomFloats(rng, experts * dim));
      MoeGateParams p;
      p.scoring = c.scoring;
      p.method = c.method;
      p.topK = 6;
      p.nGroup = 8;
      p.topkGroup = 3;
      p.normTopkProb = c.norm;
      p.routedScalingFactor = 2.5;
      std::vector<float> weights(tokens * p.topK);
      std::vector<int32_t> indices(tokens * p.topK);
      std::vector<float> scratch(tokens * experts);
      moeGate(x.data(), tokens, dim, w.weight(), experts,
              {biasF.data(), ElementType::F32}, p, weights.data(),
              indices.data(), scratch.data());
      for (int64_t t = 0; t < tokens; ++t) {
        std::vector<double> logits(experts);
        for (int64_t e = 0; e < experts; ++e)
          for (int64_t i = 0; i < dim; ++i)
            logits[e] +=
                static_cast<double>(x[t * dim + i]) * w.value[e * dim + i];
        std::vector<double> rw;
        std::vector<int32_t> ri;
        referenceGate(logits, experts, biasD, p, rw, ri);
        for (int64_t j = 0; j < p.topK; ++j) {
          ASSERT_EQ(indices[t * p.topK + j], ri[j]) << "token " << t;
          ASSERT_NEAR(weights[t * p.topK + j], rw[j], kRel * rw[j])
              << "token " << t;
        }
      }
    }
}

TEST(Kernels, MoeDispatchGroupedLinearCombine) {
  std::mt19937 rng(13);
  const int64_t tokens = 7, topK = 3, dim = 37, experts = 5;
  std::vector<float> x = randomFloats(rng, tokens * dim);
  std::vector<float> weights = randomFloats(rng, tokens * topK, 0, 1);
  std::vector<int32_t> indices;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> e(experts);
    std::iota(e.begin(), e.end(), 0);
    std::shuffle(e.begin(), e.end(), rng);
    indices.insert(indices.end(), e.begin(), e.begin() + topK);
  }
  int64_t n = tokens * topK;
  std::vector<float> routed(n * dim);
  std::vector<int32_t> offsets(experts + 1), slots(n), selectionRows(n);
  moeDispatch(x.data(), indices.data(), tokens, topK, dim, experts,
              routed.data(), offsets.data(), slots.data(),
              selectionRows.data());
  // Grouped by expert, stable in selection order, rows copied; the
  // selection rows invert the slots.
  ASSERT_EQ(offsets[0], 0);
  ASSERT_EQ(offsets[experts], n);
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(slots[selectionRows[i]], i);
  for (int64_t e = 0; e < experts; ++e)
    for (int32_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      ASSERT_EQ(indices[slots[r]], e);
      if (r > offsets[e]) {
        ASSERT_LT(slots[r - 1], slots[r]);
      }
      for (int64_t i = 0; i < dim; ++i)
        ASSERT_EQ(routed[r * dim + i], x[(slots[r] / topK) * dim + i]);
    }

  std::vector<float> out(tokens * dim);
  // Identity experts: out = x * sum(weights).
  moeCombine(routed.data(), weights.data(), selectionRows.data(), tokens, topK,
             dim, out.data());
  for (int64_t t = 0; t < tokens; ++t) {
    double ws = 0;
    for (int64_t j = 0; j < topK; ++j)
      ws += weights[t * topK + j];
    for (int64_t i = 0; i < dim; ++i)
      ASSERT_NEAR(out[t * dim + i], ws * x[t * dim + i], 1e-6);
  }

  // Expert e multiplies by e + 1 (a diagonal groupedLinear weight).
  std::vector<float> diag(experts * dim * dim, 0.0f);
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t i = 0; i < dim; ++i)
      diag[(e * dim + i) * dim + i] = static_cast<float>(e + 1);
  std::vector<float> y(n * dim);
  groupedLinear(routed.data(), dim, {diag.data(), ElementType::F32}, experts,
                dim, offsets.data(), y.data());
  moeCombine(y.data(), weights.data(), selectionRows.data(), tokens, topK, dim,
             out.data());
  for (int64_t t = 0; t < tokens; ++t) {
    double ws = 0;
    for (int64_t j = 0; j < topK; ++j)
      ws += weights[t * topK + j] * (indices[t * topK + j] + 1);
    for (int64_t i = 0; i < dim; ++i)
      ASSERT_NEAR(out[t * dim + i], ws * x[t * dim + i], 1e-5);
  }
}

} // namespace
} // namespace kiln::cpu
