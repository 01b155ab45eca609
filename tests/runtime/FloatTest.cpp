// fp32 <-> bf16/f16 conversions: exhaustive over every 16-bit code, and
// against independent references (GCC's _Float16 conversions for f16;
// nearest-by-distance in double for bf16) on sampled fp32 values.
#include "kiln/Float.h"

#include "gtest/gtest.h"

#include <cmath>
#include <limits>
#include <random>

namespace kiln {
namespace {

bool isNanBf16(uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu); }
bool isNanF16(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu); }

TEST(Bf16, EveryCodeRoundTrips) {
  for (uint32_t code = 0; code <= 0xffff; ++code) {
    uint16_t b = static_cast<uint16_t>(code);
    uint16_t back = floatToBf16(bf16ToFloat(b));
    if (isNanBf16(b))
      EXPECT_TRUE(isNanBf16(back)) << code;
    else
      EXPECT_EQ(back, b) << code;
  }
}

/// The nearest bf16 by distance, ties to the even code.
uint16_t referenceBf16(float f) {
  uint16_t down = static_cast<uint16_t>(std::bit_cast<uint32_t>(f) >> 16);
  uint16_t up = static_cast<uint16_t>(down + 1);
  double dDown = std::fabs(static_cast<double>(bf16ToFloat(down)) - f);
  double dUp = std::fabs(static_cast<double>(bf16ToFloat(up)) - f);
  if (dDown != dUp)
    return dDown < dUp ? down : up;
  return (down & 1) ? up : down;
}

TEST(Bf16, RoundsToNearestEven) {
  std::mt19937 rng(1);
  for (int i = 0; i < 1'000'000; ++i) {
    float f = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    if (!std::isfinite(f) || std::fabs(f) > 3.38e38f)
      continue;
    ASSERT_EQ(floatToBf16(f), referenceBf16(f)) << f;
  }
  EXPECT_EQ(floatToBf16(std::bit_cast<float>(0x3f808000u)),
            0x3f80); // tie, even below
  EXPECT_EQ(floatToBf16(std::bit_cast<float>(0x3f818000u)),
            0x3f82); // tie, even above
  EXPECT_EQ(floatToBf16(std::numeric_limits<float>::max()), 0x7f80); // overflow
  EXPECT_TRUE(isNanBf16(floatToBf16(std::nanf(""))));
}

TEST(F16, EveryCodeMatchesFloat16) {
  for (uint32_t code = 0; code <= 0xffff; ++code) {
    uint16_t h = static_cast<uint16_t>(code);
    float f = f16ToFloat(h);
    float reference = static_cast<float>(std::bit_cast<_Float16>(h));
    if (isNanF16(h)) {
      EXPECT_TRUE(std::isnan(f)) << code;
      EXPECT_TRUE(isNanF16(floatToF16(f))) << code;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(f), std::bit_cast<uint32_t>(reference))
          << code;
      EXPECT_EQ(floatToF16(f), h) << code;
    }
  }
}

TEST(F16, RoundsLikeFloat16) {
  std::mt19937 rng(2);
  for (int i = 0; i < 1'000'000; ++i) {
    // Exponents around the f16 range, so normals, subnormals, ties and
    // overflow all occur.
    float f = std::ldexp(static_cast<float>(rng()) / 4294967296.0f,
                         static_cast<int>(rng() % 50) - 30);
    if (rng() & 1)
      f = -f;
    ASSERT_EQ(floatToF16(f), std::bit_cast<uint16_t>(static_cast<_Float16>(f)))
        << f;
  }
  EXPECT_EQ(floatToF16(65520.0f), 0x7c00);   // rounds up to infinity
  EXPECT_EQ(floatToF16(65519.0f), 0x7bff);   // largest finite
  EXPECT_EQ(floatToF16(0x1p-25f), 0x0000);   // tie between 0 and 2^-24: even
  EXPECT_EQ(floatToF16(0x1.8p-24f), 0x0002); // tie between 1 and 2 units
}

} // namespace
} // namespace kiln
