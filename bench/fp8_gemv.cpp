// Decode-shaped GEMMs with bf16 vs FP8 (e4m3, 128x128 block scales) weights:
// the time of one call and the weight bytes streamed per second, for
// DeepSeek-V2-Lite shapes at 1 and 8 rows. Weights are replicated over more
// than 256 MiB and the copies are cycled, so that every call reads them from
// memory rather than from the last-level cache. Prints one JSON object.
//
//   kiln-bench-fp8-gemv [--min-seconds S] [--isa avx2|portable]
#include "kiln/Float.h"
#include "kiln/WeightTransforms.h"
#include "runtime/src/cpu/Kernels.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace kiln;
using namespace kiln::cpu;

struct Shape {
  const char *name;
  int64_t experts, in, out; // experts = 0: one plain linear
};

constexpr int64_t kBlock = 128;
constexpr int64_t kMinBytes = int64_t{256} << 20;

double now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Copies of one shape's weights in one format, cycled by successive calls.
struct Copies {
  std::vector<std::vector<uint8_t>> data;
  std::vector<std::vector<float>> scales;
  int64_t bytes = 0; // of one copy, weights and scales
};

Copies makeCopies(const Shape &s, bool fp8, std::mt19937 &rng) {
  int64_t matrices = std::max<int64_t>(1, s.experts);
  int64_t elements = matrices * s.out * s.in;
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<uint16_t> bf16(elements);
  for (auto &v : bf16)
    v = floatToBf16(normal(rng));
  Copies c;
  int64_t scaleCount = matrices * ((s.out + kBlock - 1) / kBlock) *
                       ((s.in + kBlock - 1) / kBlock);
  c.bytes = fp8 ? elements + scaleCount * 4 : elements * 2;
  int64_t count = std::max<int64_t>(2, (kMinBytes + c.bytes - 1) / c.bytes);
  for (int64_t i = 0; i < count; ++i) {
    if (fp8) {
      std::vector<uint8_t> codes(elements);
      std::vector<float> scales(scaleCount);
      quantizeFp8Blocks({kBlock, kBlock, false},
                        reinterpret_cast<const std::byte *>(bf16.data()),
                        FloatFormat::BF16, matrices, s.out, s.in, codes.data(),
                        scales.data());
      c.data.push_back(std::move(codes));
      c.scales.push_back(std::move(scales));
    } else {
      std::vector<uint8_t> bytes(elements * 2);
      std::memcpy(bytes.data(), bf16.data(), bytes.size());
      c.data.push_back(std::move(bytes));
    }
  }
  return c;
}

struct Result {
  double seconds; // best time of one call
  double gbps;    // weight bytes / seconds
};

/// Times bf16 and FP8 calls alternately, so that both see the same machine
/// load (other processes), and keeps the best time of each.
std::pair<Result, Result> run(const Shape &s, const Copies &bf16,
                              const Copies &fp8, int64_t rows,
                              double minSeconds) {
  int64_t matrices = std::max<int64_t>(1, s.experts);
  // Every expert gets `rows` rows, so that all of them are read.
  int64_t totalRows = rows * matrices;
  std::vector<float> x(totalRows * s.in), y(totalRows * s.out);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float &v : x)
    v = normal(rng);
  std::vector<int32_t> offsets(matrices + 1);
  for (int64_t e = 0; e <= matrices; ++e)
    offsets[e] = static_cast<int32_t>(e * rows);
  std::vector<float> scratch(fp8ActivationScratch(totalRows, s.in, kBlock));
  auto call = [&](const Copies &c, bool isFp8, size_t copy) {
    Weight w{c.data[copy].data(),
             isFp8 ? ElementType::F8E4M3 : ElementType::BF16,
             isFp8 ? c.scales[copy].data() : nullptr, kBlock, kBlock};
    Fp8Activations act{scratch.data(), false};
    if (s.experts == 0)
      linear(x.data(), rows, s.in, w, s.out, Weight{}, y.data(), act);
    else
      groupedLinear(x.data(), s.in, w, s.experts, s.out, offsets.data(),
                    y.data(), act);
  };
  auto timed = [&](const Copies &c, bool isFp8, size_t copy) {
    double t0 = now();
    call(c, isFp8, copy % c.data.size());
    return now() - t0;
  };
  for (size_t i = 0; i < std::max(bf16.data.size(), fp8.data.size()); ++i) {
    timed(bf16, false, i); // warm-up: page in every copy
    timed(fp8, true, i);
  }
  double bestBf16 = 1e30, bestFp8 = 1e30, start = now();
  for (size_t i = 0; i < 20 || now() - start < minSeconds; ++i) {
    bestBf16 = std::min(bestBf16, timed(bf16, false, i));
    bestFp8 = std::min(bestFp8, timed(fp8, true, i));
  }
  return {{bestBf16, static_cast<double>(bf16.bytes) / bestBf16 * 1e-9},
          {bestFp8, static_cast<double>(fp8.bytes) / bestFp8 * 1e-9}};
}

} // namespace

int main(int argc, char **argv) {
  double minSeconds = 1.0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--min-seconds" && i + 1 < argc) {
      minSeconds = std::atof(argv[++i]);
    } else if (arg == "--isa" && i + 1 < argc) {
      setVectorKernels(std::string(argv[++i]) != "portable");
    } else {
      std::fprintf(stderr,
                   "usage: %s [--min-seconds S] [--isa avx2|portable]\n",
                   argv[0]);
      return 2;
    }
  }
  const Shape shapes[] = {{"dense_up [2048 -> 10944]", 0, 2048, 10944},
                          {"dense_down [10944 -> 2048]", 0, 10944, 2048},
                          {"experts [64 x 1408 x 2048]", 64, 2048, 1408},
                          {"experts_down [64 x 2048 x 1408]", 64, 1408, 2048}};
  std::mt19937 rng(0);
  std::printf("{\n  \"threads\": %d,\n  \"vector_kernels\": %s,\n"
              "  \"note\": \"best time of one call; GB/s = weight bytes "
              "(fp8: codes + scales) / time; experts: every expert gets "
              "`rows` rows\",\n  \"results\": [",
              omp_get_max_threads(), vectorKernelsActive() ? "true" : "false");
  bool first = true;
  for (const Shape &s : shapes) {
    Copies bf16 = makeCopies(s, false, rng);
    Copies fp8 = makeCopies(s, true, rng);
    for (int64_t rows : {1, 8}) {
      auto [b, f] = run(s, bf16, fp8, rows, minSeconds);
      std::printf("%s\n    {\"shape\": \"%s\", \"rows\": %lld, "
                  "\"bf16_us\": %.1f, \"bf16_gbps\": %.2f, "
                  "\"fp8_us\": %.1f, \"fp8_gbps\": %.2f, "
                  "\"fp8_speedup\": %.2f}",
                  first ? "" : ",", s.name, static_cast<long long>(rows),
                  b.seconds * 1e6, b.gbps, f.seconds * 1e6, f.gbps,
                  b.seconds / f.seconds);
      std::fflush(stdout);
      first = false;
    }
  }
  std::printf("\n  ]\n}\n");
  return 0;
}
