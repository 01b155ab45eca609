// The FP8 latent cache kernels: quantization against a reference written
// here (bit-exact codes, scales and bf16 values), gathers of what was
// appended, and attention against a double-precision reference on the
// dequantized rows. Pools are filled with 0xff bytes (NaN codes, scales and
// bf16 values) and have a guard block before them (what block id -1
// addresses), so any read outside the keys a query may see shows up in the
// output.
//
// Tolerance: attention does fp32 arithmetic on exactly the dequantized
// values; its outputs are convex combinations of values of magnitude <= 4,
// so 2e-5 absolute is ~1e-5 relative to their scale.
#include "runtime/src/cpu/PagedPacked.h"

#include "kiln/Float.h"
#include "tests/runtime/ForEachIsa.h"
#include "tests/runtime/PagedTestUtil.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

namespace kiln::cpu {
namespace {

constexpr double kTol = 2e-5;

TEST(PagedPacked, LayoutSizes) {
  PackedRowLayout deepseek{512, 64};
  EXPECT_EQ(deepseek.scaleGroups(), 4);
  EXPECT_EQ(deepseek.scaleOffset(), 512);
  EXPECT_EQ(deepseek.bf16Offset(), 528);
  EXPECT_EQ(deepseek.rowBytes(), 656);
  EXPECT_EQ(deepseek.columns(), 576);

  PackedRowLayout tiny{32, 16};
  EXPECT_EQ(tiny.scaleGroups(), 1);
  EXPECT_EQ(tiny.scaleOffset(), 32);
  EXPECT_EQ(tiny.bf16Offset(), 36);
  EXPECT_EQ(tiny.rowBytes(), 68);

  // Codes padded before the scales, a partial last group, rows padded.
  PackedRowLayout odd{130, 3};
  EXPECT_EQ(odd.scaleGroups(), 2);
  EXPECT_EQ(odd.scaleOffset(), 132);
  EXPECT_EQ(odd.bf16Offset(), 140);
  EXPECT_EQ(odd.rowBytes(), 148);

  // A bf16 row (no e4m3 columns): 2 bytes a value, nothing else.
  PackedRowLayout bf16{0, 576};
  EXPECT_EQ(bf16.scaleGroups(), 0);
  EXPECT_EQ(bf16.bf16Offset(), 0);
  EXPECT_EQ(bf16.rowBytes(), 1152);
  EXPECT_TRUE(bf16.packed());
  EXPECT_FALSE(PackedRowLayout{}.packed()); // an f32 slot
}

/// A row as the cache should hold it, quantized independently of the
/// kernel, and its dequantized values.
struct RefRow {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<uint16_t> bf16;
  std::vector<float> values;
};

RefRow quantizeRef(const float *x, int64_t quant, int64_t bf16Cols) {
  RefRow r;
  for (int64_t g0 = 0; g0 < quant; g0 += 128) {
    int64_t g1 = std::min<int64_t>(g0 + 128, quant);
    float amax = 0.0f;
    for (int64_t c = g0; c < g1; ++c)
      amax = std::max(amax, std::fabs(x[c]));
    float s = std::max(amax, 1e-4f) / 448.0f;
    r.scales.push_back(s);
    for (int64_t c = g0; c < g1; ++c) {
      r.codes.push_back(floatToE4m3(x[c] / s));
      r.values.push_back(e4m3ToFloat(r.codes.back()) * s);
    }
  }
  for (int64_t c = 0; c < bf16Cols; ++c) {
    r.bf16.push_back(floatToBf16(x[quant + c]));
    r.values.push_back(bf16ToFloat(r.bf16.back()));
  }
  return r;
}

/// Latent rows whose 128-groups span several orders of magnitude (and
/// include an all-zero group and exact zeros), so that scales differ.
std::vector<float> latentRows(std::mt19937 &rng, int64_t rows,
                              PackedRowLayout l) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-3, 2);
  std::vector<float> x(rows * l.columns());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g * 128 < l.columns(); ++g) {
      float magnitude = std::ldexp(1.0f, exponent(rng));
      bool zero = (r + g) % 11 == 5 && g * 128 < l.quantColumns;
      for (int64_t c = g * 128; c < std::min((g + 1) * 128, l.columns()); ++c)
        x[r * l.columns() + c] =
            zero || c % 17 == 3 ? 0.0f : dist(rng) * magnitude;
    }
  return x;
}

/// A pool of `numBlocks` blocks of 0xff bytes after an 0xff guard block.
struct Pool {
  std::vector<std::byte> storage;
  int64_t blockBytes;
  Pool(int64_t numBlocks, int64_t blockTokens, PackedRowLayout l)
      : storage((numBlocks + 1) * blockTokens * l.rowBytes(), std::byte{0xff}),
        blockBytes(blockTokens * l.rowBytes()) {}
  std::byte *data() { return storage.data() + blockBytes; }
};

TEST(PagedPacked, AppendQuantizesAndGatherDequantizes) {
  for (PackedRowLayout l : {PackedRowLayout{512, 64}, PackedRowLayout{32, 16},
                            PackedRowLayout{130, 3}, PackedRowLayout{40, 6},
                            PackedRowLayout{0, 40}, PackedRowLayout{0, 3}}) {
    SCOPED_TRACE(std::to_string(l.quantColumns) + "+" +
                 std::to_string(l.bf16Columns));
    std::mt19937 rng(static_cast<uint32_t>(l.quantColumns));
    int64_t batch = 3, seq = 5, bt = 4, stride = 6, numBlocks = 20;
    std::vector<float> x = latentRows(rng, batch * seq, l);
    // A prefill continuing at 2, a padded row, a decode-like row crossing a
    // block boundary.
    std::vector<int32_t> positions = {2,  3,  4,  5,  6,  -1, 0, 1,
                                      -1, -1, 20, 21, 22, 23, 3};
    std::vector<int32_t> tables(batch * stride, -1);
    tables[0 * stride + 0] = 7;
    tables[0 * stride + 1] = 2;
    tables[1 * stride + 0] = 11;
    tables[2 * stride + 0] = 0;
    tables[2 * stride + 5] = 19;
    Pool pool(numBlocks, bt, l);
    kvAppendPagedPacked(x.data(), positions.data(), batch, seq, l, pool.data(),
                        tables.data(), stride, bt);
    int64_t rowBytes = l.rowBytes();
    std::vector<bool> written(numBlocks * bt, false);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t s = 0; s < seq; ++s) {
        int32_t p = positions[b * seq + s];
        if (p < 0)
          continue;
        SCOPED_TRACE("b " + std::to_string(b) + " s " + std::to_string(s));
        int64_t row = tables[b * stride + p / bt] * bt + p % bt;
        written[row] = true;
        const std::byte *at = pool.data() + row * rowBytes;
        RefRow ref = quantizeRef(x.data() + (b * seq + s) * l.columns(),
                                 l.quantColumns, l.bf16Columns);
        for (int64_t c = 0; c < l.quantColumns; ++c)
          ASSERT_EQ(static_cast<uint8_t>(at[c]), ref.codes[c]) << "code " << c;
        for (int64_t g = 0; g < l.scaleGroups(); ++g) {
          float s;
          std::memcpy(&s, at + l.scaleOffset() + 4 * g, 4);
          ASSERT_EQ(s, ref.scales[g]) << "scale " << g;
        }
        for (int64_t c = 0; c < l.bf16Columns; ++c) {
          uint16_t bits;
          std::memcpy(&bits, at + l.bf16Offset() + 2 * c, 2);
          ASSERT_EQ(bits, ref.bf16[c]) << "bf16 " << c;
        }

        // Gathers of the whole row and of column ranges within and across
        // the two parts.
        const int32_t *table = tables.data() + b * stride;
        for (auto [column, count] :
             {std::pair<int64_t, int64_t>{0, l.columns()},
              {l.quantColumns - 3, 5},
              {1, l.quantColumns - 1},
              {l.quantColumns + 1, l.bf16Columns - 1}}) {
          if (column < 0 || count < 1 || column + count > l.columns())
            continue; // a bf16 row has no e4m3 part to cut across
          forEachIsa([&] {
            std::vector<float> out((p + 1) * count);
            gatherPagedPacked(pool.data(), l, table, bt, p + 1, column, count,
                              out.data());
            for (int64_t c = 0; c < count; ++c)
              ASSERT_EQ(out[p * count + c], ref.values[column + c])
                  << "column " << column + c;
          });
        }
      }
    // Nothing else was written.
    for (size_t i = 0; i < pool.storage.size(); ++i) {
      int64_t row = static_cast<int64_t>(i) / rowBytes - bt; // after the guard
      if (row < 0 || !written[row]) {
        ASSERT_EQ(pool.storage[i], std::byte{0xff}) << "byte " << i;
      }
    }
  }
}

/// Runs `body` with `threads` OpenMP threads (0: the default), which sets
/// how far attention splits the context.
template <typename F> void withThreads(int threads, F body) {
  int before = omp_get_max_threads();
  if (threads > 0)
    omp_set_num_threads(threads);
  SCOPED_TRACE("threads " + std::to_string(omp_get_max_threads()));
  body();
  omp_set_num_threads(before);
}

struct Fp8Case {
  int64_t batch, seq, heads;
  PackedRowLayout layout;
  int64_t dv, maxTokens;
  std::vector<int32_t> positions, kvLengths;
  int64_t blockTokens = 64;
};

/// attention in double precision on rows [batch, maxTokens, dk] (values:
/// their first dv columns).
std::vector<float> attentionRef(const Fp8Case &c, const std::vector<float> &q,
                                const std::vector<float> &rows, double scale) {
  int64_t dk = c.layout.columns(), dv = c.dv;
  std::vector<float> out(c.batch * c.seq * c.heads * dv, 0.0f);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t s = 0; s < c.seq; ++s) {
      int32_t pos = c.positions[b * c.seq + s];
      int64_t n = pos < 0 ? 0 : std::min<int64_t>(pos + 1, c.kvLengths[b]);
      for (int64_t h = 0; h < c.heads; ++h) {
        const float *qh = q.data() + ((b * c.seq + s) * c.heads + h) * dk;
        std::vector<double> w(n);
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < n; ++j) {
          const float *k = rows.data() + (b * c.maxTokens + j) * dk;
          double d = 0;
          for (int64_t i = 0; i < dk; ++i)
            d += static_cast<double>(qh[i]) * k[i];
          w[j] = d * scale;
          mx = std::max(mx, w[j]);
        }
        for (int64_t j = 0; j < n; ++j)
          sum += w[j] = std::exp(w[j] - mx);
        float *o = out.data() + ((b * c.seq + s) * c.heads + h) * dv;
        for (int64_t i = 0; i < dv && n > 0; ++i) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j)
            acc += w[j] * rows[(b * c.maxTokens + j) * dk + i];
          o[i] = static_cast<float>(acc / sum);
        }
      }
    }
  return out;
}

/// Appends random latents of c.kvLengths[b] tokens per sequence into
/// shuffled blocks and checks attentionPagedPacked against attentionRef on the
/// dequantized rows, unsplit and split for each thread count. With
/// `e4m3Error`, also checks the error against the unquantized rows.
void checkFp8(const Fp8Case &c, uint32_t seed,
              std::initializer_list<int> threadCounts = {0},
              bool e4m3Error = false) {
  std::mt19937 rng(seed);
  PackedRowLayout l = c.layout;
  int64_t dk = l.columns(), dv = c.dv, bt = c.blockTokens;
  std::vector<float> x = latentRows(rng, c.batch * c.maxTokens, l);
  std::vector<float> q = latentRows(rng, c.batch * c.seq * c.heads, l);
  std::vector<float> dequantized(x.size());
  for (int64_t t = 0; t < c.batch * c.maxTokens; ++t) {
    RefRow r = quantizeRef(x.data() + t * dk, l.quantColumns, l.bf16Columns);
    std::copy(r.values.begin(), r.values.end(), dequantized.begin() + t * dk);
  }
  double scale = 1.0 / std::sqrt(static_cast<double>(dk)) * 4;
  std::vector<float> ref = attentionRef(c, q, dequantized, scale);

  pagedtest::TestBlockTables t =
      pagedtest::shuffledBlockTables(rng, c.kvLengths, c.maxTokens, bt);
  std::vector<int32_t> &tables = t.ids;
  int64_t stride = t.stride, numBlocks = t.numBlocks;
  std::vector<int32_t> appendPos =
      pagedtest::prefixPositions(c.kvLengths, c.maxTokens);
  Pool pool(numBlocks, bt, l);
  kvAppendPagedPacked(x.data(), appendPos.data(), c.batch, c.maxTokens, l,
                      pool.data(), tables.data(), stride, bt);

  BlockTables bts{tables.data(), stride, bt};
  auto run = [&](float *scratch, int64_t scratchFloats) {
    std::vector<float> out(ref.size(), -7.0f);
    attentionPagedPacked(q.data(), pool.data(), l, bts, c.positions.data(),
                         c.kvLengths.data(), c.batch, c.seq, c.heads, dk, dv,
                         static_cast<float>(scale), out.data(), scratch,
                         scratchFloats);
    return out;
  };
  auto compare = [&](const std::vector<float> &out) {
    for (size_t i = 0; i < out.size(); ++i)
      ASSERT_NEAR(out[i], ref[i], kTol) << "at " << i;
  };
  forEachIsa([&] {
    compare(run(nullptr, 0)); // no scratch: never split
    for (int threads : threadCounts)
      withThreads(threads, [&] {
        std::vector<float> scratch(
            attentionPagedScratch(c.batch * c.seq, c.heads, dv), NAN);
        compare(run(scratch.data(), static_cast<int64_t>(scratch.size())));
      });
  });

  if (!e4m3Error)
    return;
  // Against fp32 rows: e4m3 keeps 3 mantissa bits (relative error <= 2^-4
  // for normals; subnormal codes err by at most 2^-10 of the group's scale,
  // amax / 448) and bf16 7 (2^-8). A score moves by at most delta = scale *
  // sum_i |q_i| |k_i - k~_i|, which moves each softmax weight by a factor
  // within exp(+-2 delta); values move by their own rounding.
  std::vector<float> exact = attentionRef(c, q, x, scale);
  std::vector<float> out = run(nullptr, 0);
  double maxAbs = 0, errSum = 0;
  for (float v : x)
    maxAbs = std::max(maxAbs, static_cast<double>(std::fabs(v)));
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t s = 0; s < c.seq; ++s)
      for (int64_t h = 0; h < c.heads; ++h) {
        int64_t row = (b * c.seq + s) * c.heads + h;
        double delta = 0;
        for (int64_t j = 0; j < c.kvLengths[b]; ++j) {
          const float *k = x.data() + (b * c.maxTokens + j) * dk;
          const float *kq = dequantized.data() + (b * c.maxTokens + j) * dk;
          double d = 0;
          for (int64_t i = 0; i < dk; ++i)
            d += std::fabs(q[row * dk + i]) * std::fabs(k[i] - kq[i]);
          delta = std::max(delta, d * scale);
        }
        double bound = (std::exp(2 * delta) - 1) * maxAbs + maxAbs / 16;
        for (int64_t i = 0; i < dv; ++i) {
          double err = std::fabs(out[row * dv + i] - exact[row * dv + i]);
          ASSERT_LE(err, bound) << "row " << row << " column " << i;
          errSum += err;
        }
      }
  // The bound is loose. Typical errors: a few percent of the values' mean
  // magnitude here, where scores spread widely (the test's 4 / sqrt(dk)
  // scale), so that their e4m3 errors move the softmax weights noticeably.
  double valueSum = 0;
  for (int64_t t = 0; t < c.batch * c.maxTokens; ++t)
    for (int64_t i = 0; i < dv; ++i)
      valueSum += std::fabs(x[t * dk + i]);
  double meanErr = errSum / static_cast<double>(out.size());
  double meanValue = valueSum / static_cast<double>(c.batch * c.maxTokens * dv);
  EXPECT_LT(meanErr / meanValue, 0.1);
}

TEST(PagedPacked, DecodeTiny) {
  // Ragged lengths, an empty sequence, a padded row, several blocks.
  Fp8Case c{
      4, 1, 16, {32, 16}, 32, 1100, {0, 299, -1, 1099}, {1, 300, 0, 1100}};
  checkFp8(c, 1, {1, 0, 3, 8});
}

TEST(PagedPacked, DecodeDeepSeekDims) {
  Fp8Case c{2, 1, 16, {512, 64}, 512, 700, {699, 64}, {700, 65}};
  checkFp8(c, 2, {0, 4}, /*e4m3Error=*/true);
}

TEST(PagedPacked, DecodeBf16Rows) {
  // A bf16 latent (no e4m3 columns): values are bf16 columns too.
  Fp8Case c{2, 1, 16, {0, 576}, 512, 700, {699, 64}, {700, 65}};
  checkFp8(c, 8, {0, 4});
}

TEST(PagedPacked, DecodeManyHeads) {
  // 160 heads: two chunks of 80.
  Fp8Case c{1, 1, 160, {32, 16}, 32, 600, {599}, {600}, 16};
  checkFp8(c, 3, {0, 5});
}

TEST(PagedPacked, OddDimsAndBlocks) {
  // Partial vectors everywhere: 40 codes (2.5 vectors of 16), 6 bf16
  // values, dk 46, dv 36, 5 heads, blocks of 7 tokens.
  Fp8Case c{3, 1, 5, {40, 6}, 36, 500, {499, 12, 300}, {500, 13, 400}, 7};
  checkFp8(c, 4, {0, 2, 6});
}

TEST(PagedPacked, ShortPrefillSplits) {
  // Three rows continuing a long context: fewer items than threads, so each
  // row's context is split.
  Fp8Case c{1, 3, 16, {32, 16}, 32, 603, {600, 601, 602}, {603}};
  checkFp8(c, 7, {8});
}

TEST(PagedPacked, CausalPrefill) {
  // Sequence 0 continues at position 40; sequence 1 starts at 0 with two
  // padded rows at the end.
  int64_t seq = 37;
  std::vector<int32_t> positions;
  for (int64_t s = 0; s < seq; ++s)
    positions.push_back(static_cast<int32_t>(40 + s));
  for (int64_t s = 0; s < seq; ++s)
    positions.push_back(s < seq - 2 ? static_cast<int32_t>(s) : -1);
  Fp8Case c{2, seq, 8, {32, 16}, 32, 77, positions, {77, 35}, 16};
  checkFp8(c, 5, {1, 0, 3});
  Fp8Case deepseek{1, 20, 16, {512, 64}, 512, 20, {}, {20}};
  for (int32_t s = 0; s < 20; ++s)
    deepseek.positions.push_back(s);
  checkFp8(deepseek, 6, {0}, /*e4m3Error=*/true);
}

} // namespace
} // namespace kiln::cpu
