// The host SIMT runner (runtime/kernels/HostSimt.h) against CUDA's thread
// semantics: indices, shared memory, barriers, shuffles, the mma's lane
// exchange, and the errors it reports. Built only into
// kiln-device-kernels-simt-tests (KILN_HOST_SIMT).
#include "FusedPrelude.h"
#include "WarpMma.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

namespace kiln {
namespace {

TEST(HostSimt, ThreadsKnowTheirIndexWarpAndLane) {
  std::vector<int> seen(256, -1);
  simt::runBlock(256, 3, 1, 0, [&] {
    EXPECT_EQ(KILN_THREADS, 256);
    EXPECT_EQ(KILN_WARPS, 8);
    EXPECT_EQ(KILN_WARP * 32 + KILN_LANE, KILN_THREAD);
    seen[KILN_THREAD] = KILN_THREAD;
  });
  for (int t = 0; t < 256; ++t)
    EXPECT_EQ(seen[t], t);
}

// The threads' first turns follow KILN_SIMT_ORDER (CTest runs each order):
// in index order, last first, or shuffled, the same shuffle for the same
// block every time.
TEST(HostSimt, ThreadsTakeTurnsInTheConfiguredOrder) {
  auto firstTurns = [](int block) {
    std::vector<int> turns;
    simt::runBlock(128, block, 0, 0, [&] {
      turns.push_back(KILN_THREAD);
      KILN_SYNC();
    });
    return turns;
  };
  std::vector<int> turns = firstTurns(7), forward(128);
  std::iota(forward.begin(), forward.end(), 0);
  std::vector<int> reverse(forward.rbegin(), forward.rend());
  const char *order = std::getenv("KILN_SIMT_ORDER");
  std::string mode = order ? order : "forward";
  if (mode == "reverse") {
    EXPECT_EQ(turns, reverse);
  } else if (mode == "shuffle") {
    std::vector<int> sorted = turns;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, forward);
    EXPECT_NE(turns, forward);
    EXPECT_NE(turns, reverse);
    EXPECT_EQ(firstTurns(7), turns);
    EXPECT_NE(firstTurns(8), turns);
  } else {
    EXPECT_EQ(turns, forward);
  }
}

TEST(HostSimt, ABarrierMakesEveryThreadsWriteVisible) {
  // Each thread reads the slot the next thread wrote before the barrier:
  // whichever order the threads take turns in, every read is fresh.
  std::vector<int> read(128, -1);
  for (int round = 0; round < 3; ++round) {
    simt::runBlock(128, round, 0, 0, [&] {
      KILN_SHARED int slots[128];
      slots[KILN_THREAD] = 1000 * round + KILN_THREAD;
      KILN_SYNC();
      read[KILN_THREAD] = slots[(KILN_THREAD + 1) % 128];
      KILN_SYNC();
    });
    for (int t = 0; t < 128; ++t)
      EXPECT_EQ(read[t], 1000 * round + (t + 1) % 128);
  }
}

TEST(HostSimt, ShufflesExchangeWithinTheWarp) {
  std::vector<int> got(64, -1);
  std::vector<float> sums(64), maxima(64);
  simt::runBlock(64, 0, 0, 0, [&] {
    got[KILN_THREAD] = KILN_SHFL_XOR(KILN_THREAD, 5);
    sums[KILN_THREAD] = warpSum(static_cast<float>(KILN_THREAD));
    maxima[KILN_THREAD] = blockMax(static_cast<float>(KILN_THREAD % 37));
  });
  for (int t = 0; t < 64; ++t) {
    EXPECT_EQ(got[t], (t & ~31) | ((t ^ 5) & 31));
    int first = t & ~31;
    EXPECT_EQ(sums[t], 32.0f * first + 496.0f); // first + (first + 31)
    EXPECT_EQ(maxima[t], 36.0f);
  }
}

TEST(HostSimt, BlockSumReachesEveryThread) {
  std::vector<float> sums(128);
  simt::runBlock(128, 0, 0, 0, [&] {
    sums[KILN_THREAD] = blockSum(static_cast<float>(KILN_THREAD));
  });
  for (float s : sums)
    EXPECT_EQ(s, 8128.0f);
}

TEST(HostSimt, MmaGathersTheWarpsFragments) {
  // A = identity (16 x 16), B[k][n] = k + 16 n: C = B's first 16 rows.
  std::vector<float> c(16 * 8, -1.0f);
  simt::runBlock(32, 0, 0, 0, [&] {
    int g = KILN_LANE / 4, t = KILN_LANE % 4;
    auto a = [&](int row, int col) { return row == col ? 1.0f : 0.0f; };
    auto b = [&](int k, int n) { return static_cast<float>(k + 16 * n); };
    Lanes<MmaA> fa;
    Lanes<MmaB> fb;
    Lanes<MmaC> fc;
    fa.value.r[0] = packBf16x2(a(g, 2 * t), a(g, 2 * t + 1));
    fa.value.r[1] = packBf16x2(a(g + 8, 2 * t), a(g + 8, 2 * t + 1));
    fa.value.r[2] = packBf16x2(a(g, 2 * t + 8), a(g, 2 * t + 9));
    fa.value.r[3] = packBf16x2(a(g + 8, 2 * t + 8), a(g + 8, 2 * t + 9));
    fb.value.r[0] = packBf16x2(b(2 * t, g), b(2 * t + 1, g));
    fb.value.r[1] = packBf16x2(b(2 * t + 8, g), b(2 * t + 9, g));
    fc.value = MmaC{};
    mmaBf16(fc, fa, fb);
    c[g * 8 + 2 * t] = fc.value.r[0];
    c[g * 8 + 2 * t + 1] = fc.value.r[1];
    c[(g + 8) * 8 + 2 * t] = fc.value.r[2];
    c[(g + 8) * 8 + 2 * t + 1] = fc.value.r[3];
  });
  for (int row = 0; row < 16; ++row)
    for (int n = 0; n < 8; ++n)
      EXPECT_EQ(c[row * 8 + n], static_cast<float>(row + 16 * n))
          << row << ", " << n;
}

TEST(HostSimt, ReturnedThreadsDoNotHoldUpABlockBarrier) {
  // As on sm_70+: a barrier waits for the threads that have not exited.
  int after = 0;
  simt::runBlock(128, 0, 0, 0, [&] {
    if (KILN_WARP == 3)
      return;
    KILN_SYNC();
    ++after;
  });
  EXPECT_EQ(after, 96);
}

// Forked children re-run the binary: OpenMP threads of earlier tests may
// be alive.
class HostSimtDeathTest : public ::testing::Test {
protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(HostSimtDeathTest, ABarrierThatCanNeverCompleteIsFatal) {
  EXPECT_DEATH(simt::runBlock(64, 2, 0, 0,
                              [&] {
                                if (KILN_THREAD == 0)
                                  KILN_SYNCWARP();
                                else
                                  KILN_SYNC();
                              }),
               "block \\(2, 0, 0\\).*can never complete");
}

TEST_F(HostSimtDeathTest, AShuffleAfterLanesReturnedIsFatal) {
  EXPECT_DEATH(simt::runBlock(32, 0, 0, 0,
                              [&] {
                                if (KILN_LANE != 0)
                                  return;
                                (void)KILN_SHFL_XOR(1.0f, 1);
                              }),
               "after lanes of the warp returned");
}

TEST_F(HostSimtDeathTest, LanesAtDifferentWarpOperationsAreFatal) {
  EXPECT_DEATH(simt::runBlock(32, 0, 0, 0,
                              [&] {
                                if (KILN_LANE == 0)
                                  KILN_SYNCWARP();
                                else
                                  (void)KILN_SHFL_XOR(1.0f, 1);
                              }),
               "different warp operations");
}

} // namespace
} // namespace kiln
