#include "kiln/Sampler.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

namespace kiln {
namespace {

TEST(Sampler, GreedyTakesArgmaxLowestIndexOnTies) {
  Sampler s({});
  const std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};
  EXPECT_EQ(s.sample(logits.data(), 5), 1);
  const std::vector<float> nan = {std::numeric_limits<float>::quiet_NaN(),
                                  -2.0f, -1.0f};
  EXPECT_EQ(s.sample(nan.data(), 3), 2);
}

TEST(Sampler, UniformIs53BitsOfTheEngine) {
  SamplingParams p;
  p.seed = 42;
  Sampler s(p);
  std::mt19937_64 engine(42);
  for (int i = 0; i < 100; ++i) {
    double u = s.uniform();
    EXPECT_EQ(u, static_cast<double>(engine() >> 11) / 9007199254740992.0);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(Sampler, SameSeedSameSequence) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i)
    logits[i] = std::sin(static_cast<float>(i)) * 2.0f;
  SamplingParams p;
  p.temperature = 1.0f;
  p.topK = 20;
  p.topP = 0.9f;
  p.seed = 7;
  Sampler a(p), b(p);
  p.seed = 8;
  Sampler c(p);
  std::vector<int32_t> sa, sb, sc;
  for (int i = 0; i < 200; ++i) {
    sa.push_back(a.sample(logits.data(), 50));
    sb.push_back(b.sample(logits.data(), 50));
    sc.push_back(c.sample(logits.data(), 50));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
}

TEST(Sampler, TopKOneIsGreedy) {
  const std::vector<float> logits = {0.1f, 2.0f, 1.9f, 2.0f, -3.0f};
  SamplingParams p;
  p.temperature = 2.0f;
  p.topK = 1;
  Sampler s(p);
  for (int i = 0; i < 100; ++i)
    ASSERT_EQ(s.sample(logits.data(), 5), 1);
}

TEST(Sampler, SmallTopPKeepsOnlyTheArgmax) {
  const std::vector<float> logits = {0.1f, 1.0f, 1.2f, 0.9f, -3.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.topP = 0.05f;
  Sampler s(p);
  for (int i = 0; i < 1000; ++i)
    ASSERT_EQ(s.sample(logits.data(), 5), 2);
}

TEST(Sampler, TopKRestrictsTheSupport) {
  const std::vector<float> logits = {0.0f, 0.5f, 0.2f, 0.4f, 0.1f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.topK = 2;
  p.seed = 3;
  Sampler s(p);
  std::array<int, 5> counts{};
  for (int i = 0; i < 2000; ++i)
    ++counts[s.sample(logits.data(), 5)];
  EXPECT_EQ(counts[0] + counts[2] + counts[4], 0);
  EXPECT_GT(counts[1], counts[3]);
  EXPECT_GT(counts[3], 0);
}

TEST(Sampler, EmpiricalFrequenciesMatchTheDistribution) {
  // Probabilities 0.5, 0.3, 0.2 via logits log(p) at temperature 1; and the
  // same distribution from logits scaled by 2 at temperature 2.
  for (float t : {1.0f, 2.0f}) {
    SCOPED_TRACE(t);
    const std::vector<float> logits = {t * std::log(0.5f), t * std::log(0.3f),
                                       t * std::log(0.2f)};
    SamplingParams p;
    p.temperature = t;
    p.seed = 123;
    Sampler s(p);
    std::array<int, 3> counts{};
    const int draws = 100000;
    for (int i = 0; i < draws; ++i)
      ++counts[s.sample(logits.data(), 3)];
    EXPECT_NEAR(counts[0] / double(draws), 0.5, 0.01);
    EXPECT_NEAR(counts[1] / double(draws), 0.3, 0.01);
    EXPECT_NEAR(counts[2] / double(draws), 0.2, 0.01);
  }
}

TEST(Sampler, TopPRenormalizesThePrefix) {
  // p = 0.5, 0.3, 0.2: top_p 0.7 keeps {0, 1} (0.5 < 0.7 <= 0.8), drawn
  // 5:3.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f),
                                     std::log(0.2f)};
  SamplingParams p;
  p.temperature = 1.0f;
  p.topP = 0.7f;
  p.seed = 5;
  Sampler s(p);
  std::array<int, 3> counts{};
  const int draws = 100000;
  for (int i = 0; i < draws; ++i)
    ++counts[s.sample(logits.data(), 3)];
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / double(draws), 0.625, 0.01);
}

} // namespace
} // namespace kiln
