// cuBLASLt as the CUDA executor calls it (runtime/src/cuda/CublasLt.h), on a
// GPU, against a double-precision host GEMM over the same operands: the bf16
// GEMM, and the FP8 GEMM with DeepSeek-V3's block scales (e4m3 weights with
// one scale per 128x128 block, activations quantized per token per 128
// values by the runtime's own quantizer, scales in cuBLASLt's token-minor
// layout). Random block scales spread over a decade, so a scale read from
// the wrong block or in the wrong layout is off by far more than the
// tolerance. Without a GPU or libcublasLt the test is skipped, saying which
// (label gpu).
#include "runtime/src/cuda/CublasLt.h"
#include "runtime/src/cpu/Kernels.h"
#include "runtime/src/cuda/CudaDriver.h"
#include "tests/runtime/GpuBuffers.h"

#include "kiln/Float.h"

#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace kiln::cuda {
namespace {

/// Each test's GPU and cuBLASLt; skipped, saying why, without either.
class CublasLt : public ::testing::Test {
protected:
  void SetUp() override {
    std::string skip = openGpu(Driver::load(), driver_, gpu_);
    if (!skip.empty())
      GTEST_SKIP() << skip;
    absl::StatusOr<BlasLt> blas = BlasLt::load();
    if (!blas.ok())
      GTEST_SKIP() << blas.status().message();
    blas_.emplace(*std::move(blas));
  }
  // Destroyed in reverse: cuBLASLt, then the GPU's memory, then the driver.
  std::optional<Driver> driver_;
  std::optional<Gpu> gpu_;
  std::optional<BlasLt> blas_;
};

/// |got - want| within `relative` of sum_j |x_j w_j| for every output.
void expectClose(const std::vector<float> &got, const std::vector<double> &want,
                 const std::vector<double> &magnitude, double relative) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], relative * magnitude[i] + 1e-30)
        << "output " << i;
}

constexpr size_t kWorkspace = size_t{32} << 20;

TEST_F(CublasLt, Bf16GemmMatchesTheHost) {
  Gpu &gpu = *gpu_;
  const int64_t m = 37, n = 384, k = 1024;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> x(m * k), w(n * k);
  for (uint16_t &v : x)
    v = floatToBf16(normal(rng));
  for (uint16_t &v : w)
    v = floatToBf16(normal(rng));
  std::vector<double> want(m * n), magnitude(m * n);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < n; ++c)
      for (int64_t j = 0; j < k; ++j) {
        double p =
            double(bf16ToFloat(x[r * k + j])) * bf16ToFloat(w[c * k + j]);
        want[r * n + c] += p;
        magnitude[r * n + c] += std::fabs(p);
      }
  CUdeviceptr out = gpu.allocate(m * n * sizeof(float));
  ASSERT_TRUE(blas_
                  ->gemmBf16(gpu.stream(), m, n, k,
                             gpu.upload(x.data(), x.size() * 2),
                             gpu.upload(w.data(), w.size() * 2), out,
                             gpu.allocate(kWorkspace), kWorkspace)
                  .ok());
  // fp32 accumulation of exact bf16 products.
  expectClose(gpu.download(out, m * n), want, magnitude, 2.0 * k * 0x1p-24);
}

TEST_F(CublasLt, BlockScaledFp8GemmMatchesTheHost) {
  Gpu &gpu = *gpu_;
  // Decode-batch and prefill row counts (a partial 128-row block of n).
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{32, 1536, 7168},
                         {301, 400, 1024}}) {
    SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(n) + "x" +
                 std::to_string(k));
    ASSERT_TRUE(BlasLt::fp8Shape(n, k));
    std::mt19937 rng(2);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> code(0, 253);
    std::uniform_real_distribution<float> scale(0.001f, 0.01f);
    int64_t nb = (n + 127) / 128, kb = k / 128;
    std::vector<uint8_t> w(n * k);
    for (uint8_t &c : w) {
      c = static_cast<uint8_t>(code(rng));
      if ((c & 0x7f) == 0x7f) // NaN
        c = 0x7e;
    }
    std::vector<float> wScale(nb * kb);
    for (float &s : wScale)
      s = scale(rng);
    std::vector<float> x(m * k);
    for (int64_t r = 0; r < m; ++r) // rows of different magnitudes
      for (int64_t j = 0; j < k; ++j)
        x[r * k + j] = normal(rng) * float(1 + r % 7);
    std::vector<uint8_t> xCodes(m * k);
    // Token-minor, each block of scales padded to a multiple of 4 rows.
    int64_t stride = (m + 3) / 4 * 4;
    std::vector<float> xScale(m * kb), xScaleByBlock(stride * kb, 0.0f);
    cpu::quantizeFp8(x.data(), m, k, 128, false, xCodes.data(), xScale.data());
    for (int64_t r = 0; r < m; ++r)
      for (int64_t g = 0; g < kb; ++g)
        xScaleByBlock[g * stride + r] = xScale[r * kb + g];
    std::vector<double> want(m * n), magnitude(m * n);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c)
        for (int64_t j = 0; j < k; ++j) {
          double p = double(e4m3ToFloat(xCodes[r * k + j])) *
                     xScale[r * kb + j / 128] * e4m3ToFloat(w[c * k + j]) *
                     wScale[(c / 128) * kb + j / 128];
          want[r * n + c] += p;
          magnitude[r * n + c] += std::fabs(p);
        }
    CUdeviceptr out = gpu.allocate(m * n * sizeof(float));
    absl::Status s = blas_->gemmFp8(
        gpu.stream(), m, n, k, gpu.upload(xCodes.data(), xCodes.size()),
        gpu.upload(xScaleByBlock.data(), xScaleByBlock.size() * 4),
        gpu.upload(w.data(), w.size()),
        gpu.upload(wScale.data(), wScale.size() * 4), out,
        gpu.allocate(kWorkspace), kWorkspace);
    ASSERT_TRUE(s.ok()) << s.message();
    // Hopper accumulates FP8 products in reduced precision within each
    // 128-wide block before the fp32 promotion: 2^-12 of the magnitude
    // covers that; a misplaced scale is off by up to 10x.
    expectClose(gpu.download(out, m * n), want, magnitude, 0x1p-12);
  }
}

} // namespace
} // namespace kiln::cuda
