// Decode attention over DeepSeek's absorbed-MLA latent cache (576 columns,
// values its first 512, one kv head): attentionPaged on the fp32 cache
// against attentionPagedPacked on the FP8 one (656 bytes per token instead of
// 2,304). Prints one JSON object per configuration: median and best
// milliseconds per call and the cache bytes read per second at the median.
//
// Usage: fp8-kv-attention [heads=16] [repeats=20]; threads from
// OMP_NUM_THREADS.
#include "runtime/src/cpu/Kernels.h"
#include "runtime/src/cpu/PagedPacked.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

namespace {

using namespace kiln::cpu;

constexpr int64_t kLatent = 512, kRope = 64, kDk = kLatent + kRope;
constexpr int64_t kBlockTokens = 64;

template <typename F> std::pair<double, double> timeMs(int repeats, F call) {
  call(); // warm-up: page faults, caches
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    call();
    auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms[0]};
}

void run(int64_t batch, int64_t context, int64_t heads, int repeats) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  int64_t blocksPerSeq = context / kBlockTokens;
  int64_t numBlocks = batch * blocksPerSeq;
  // Sequences' blocks are interleaved at random, as in a long-running pool.
  std::vector<int32_t> ids(numBlocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  BlockTables tables{ids.data(), blocksPerSeq, kBlockTokens};
  std::vector<int32_t> positions(batch, static_cast<int32_t>(context - 1));
  std::vector<int32_t> kvLengths(batch, static_cast<int32_t>(context));
  std::vector<float> q(batch * heads * kDk);
  for (float &v : q)
    v = dist(rng);
  float scale = 1.0f / std::sqrt(static_cast<float>(kDk));
  std::vector<float> out(batch * heads * kLatent);
  std::vector<float> scratch(attentionPagedScratch(batch, heads, kLatent));
  auto scratchFloats = static_cast<int64_t>(scratch.size());

  // Both caches hold the same latents, appended in chunks of 4,096 tokens.
  std::vector<float> fp32(numBlocks * kBlockTokens * kDk);
  PackedRowLayout layout{kLatent, kRope};
  std::vector<std::byte> fp8(numBlocks * kBlockTokens * layout.rowBytes());
  int64_t chunk = std::min<int64_t>(context, 4096);
  std::vector<float> x(batch * chunk * kDk);
  std::vector<int32_t> appendPos(batch * chunk);
  for (int64_t p0 = 0; p0 < context; p0 += chunk) {
    for (float &v : x)
      v = dist(rng);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t s = 0; s < chunk; ++s)
        appendPos[b * chunk + s] = static_cast<int32_t>(p0 + s);
    kvAppendPaged(x.data(), appendPos.data(), batch, chunk, kDk, fp32.data(),
                  ids.data(), blocksPerSeq, kBlockTokens);
    kvAppendPagedPacked(x.data(), appendPos.data(), batch, chunk, layout,
                        fp8.data(), ids.data(), blocksPerSeq, kBlockTokens);
  }

  PagedView k{fp32.data(), kDk, kDk, 0}, v{fp32.data(), kDk, kLatent, 0};
  auto [fp32Median, fp32Best] = timeMs(repeats, [&] {
    attentionPaged(q.data(), k, v, tables, positions.data(), kvLengths.data(),
                   batch, 1, heads, 1, kDk, kLatent, scale, out.data(),
                   scratch.data(), scratchFloats);
  });
  auto [fp8Median, fp8Best] = timeMs(repeats, [&] {
    attentionPagedPacked(q.data(), fp8.data(), layout, tables, positions.data(),
                         kvLengths.data(), batch, 1, heads, kDk, kLatent, scale,
                         out.data(), scratch.data(), scratchFloats);
  });
  double tokens = static_cast<double>(batch * context);
  std::printf(
      "{\"batch\": %lld, \"context\": %lld, \"heads\": %lld, \"threads\": %d, "
      "\"fp32_ms\": %.3f, \"fp32_best_ms\": %.3f, \"fp8_ms\": %.3f, "
      "\"fp8_best_ms\": %.3f, \"speedup\": %.2f, \"fp32_gb_s\": %.1f, "
      "\"fp8_gb_s\": %.1f}\n",
      static_cast<long long>(batch), static_cast<long long>(context),
      static_cast<long long>(heads), omp_get_max_threads(), fp32Median,
      fp32Best, fp8Median, fp8Best, fp32Median / fp8Median,
      tokens * kDk * 4 / fp32Median / 1e6,
      tokens * static_cast<double>(layout.rowBytes()) / fp8Median / 1e6);
  std::fflush(stdout);
}

} // namespace

int main(int argc, char **argv) {
  int64_t heads = argc > 1 ? std::atoll(argv[1]) : 16;
  int repeats = argc > 2 ? std::atoi(argv[2]) : 20;
  for (int64_t context : {4096, 32768})
    for (int64_t batch : {1, 8})
      run(batch, context, heads, repeats);
}
