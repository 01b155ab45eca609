// cuBLASLt, loaded at run time with dlopen through a table of entry points
// (like the driver, CudaDriver.h): the CUDA executor's GEMMs of many rows
// (prefill, large decode batches, the experts of a prefill): bf16, and FP8
// with DeepSeek's block scales (VEC128 activations, BLK128x128 weights).
// Nothing links against libcublasLt; where it is missing the executor keeps
// its own GEMM kernels.
#ifndef KILN_RUNTIME_CUDA_CUBLASLT_H
#define KILN_RUNTIME_CUDA_CUBLASLT_H

#include "absl/status/statusor.h"

#include <cublasLt.h>
#include <cuda.h>

#include <map>
#include <tuple>

namespace kiln::cuda {

struct BlasLtApi {
  cublasStatus_t (*create)(cublasLtHandle_t *);
  cublasStatus_t (*destroy)(cublasLtHandle_t);
  const char *(*statusString)(cublasStatus_t);
  cublasStatus_t (*descCreate)(cublasLtMatmulDesc_t *, cublasComputeType_t,
                               cudaDataType_t);
  cublasStatus_t (*descDestroy)(cublasLtMatmulDesc_t);
  cublasStatus_t (*descSetAttribute)(cublasLtMatmulDesc_t,
                                     cublasLtMatmulDescAttributes_t,
                                     const void *, size_t);
  cublasStatus_t (*layoutCreate)(cublasLtMatrixLayout_t *, cudaDataType,
                                 uint64_t, uint64_t, int64_t);
  cublasStatus_t (*layoutDestroy)(cublasLtMatrixLayout_t);
  cublasStatus_t (*preferenceCreate)(cublasLtMatmulPreference_t *);
  cublasStatus_t (*preferenceDestroy)(cublasLtMatmulPreference_t);
  cublasStatus_t (*preferenceSetAttribute)(cublasLtMatmulPreference_t,
                                           cublasLtMatmulPreferenceAttributes_t,
                                           const void *, size_t);
  cublasStatus_t (*algoGetHeuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t,
                                     cublasLtMatrixLayout_t,
                                     cublasLtMatrixLayout_t,
                                     cublasLtMatrixLayout_t,
                                     cublasLtMatrixLayout_t,
                                     cublasLtMatmulPreference_t, int,
                                     cublasLtMatmulHeuristicResult_t[], int *);
  cublasStatus_t (*matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void *,
                           const void *, cublasLtMatrixLayout_t, const void *,
                           cublasLtMatrixLayout_t, const void *, const void *,
                           cublasLtMatrixLayout_t, void *,
                           cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t *,
                           void *, size_t, cudaStream_t);
};

class BlasLt {
public:
  /// Loads libcublasLt.so.13 (or .so.12, .so) and creates a handle;
  /// Unavailable with the reason when it cannot.
  static absl::StatusOr<BlasLt> load();
  /// Over another implementation of the entry points (EmulatedBlasLt.h).
  static absl::StatusOr<BlasLt> fromApi(const BlasLtApi &api);
  BlasLt(BlasLt &&other) noexcept;
  BlasLt &operator=(BlasLt &&) = delete;
  BlasLt(const BlasLt &) = delete;
  ~BlasLt();

  /// out[m, n] (row-major f32) = x[m, k] (row-major bf16) . w[n, k]^T
  /// (row-major bf16), fp32 accumulation. In cuBLASLt's column-major terms
  /// out^T [n, m] = op(W) [n, k] . op(X) [k, m]: W is a column-major
  /// [k, n] matrix (lda = k) taken transposed, X a column-major [k, m]
  /// matrix (ldb = k) as is, D column-major [n, m] (ldd = n): the "TN"
  /// layout (the one FP8 requires). Descriptors and the chosen algorithm
  /// are cached per shape, so repeated calls (and CUDA graph capture) only
  /// enqueue the GEMM.
  absl::Status gemmBf16(CUstream stream, int64_t m, int64_t n, int64_t k,
                        CUdeviceptr x, CUdeviceptr w, CUdeviceptr out,
                        CUdeviceptr workspace, size_t workspaceBytes);

  /// Finds gemmBf16's algorithm for this shape (once; cached with its
  /// descriptors): Unimplemented where cuBLASLt has none, so that the
  /// caller keeps its own kernel before it converts anything for this one.
  absl::Status prepareBf16(int64_t m, int64_t n, int64_t k,
                           size_t workspaceBytes);

  /// The same GEMM on e4m3 operands with DeepSeek-V3's block scales:
  /// xScale[k / 128][m rounded up to 4] (one per token per 128 values of k,
  /// token-minor: cuBLASLt's VEC128 layout), wScale[n / 128][k / 128] (one
  /// per 128x128
  /// weight block, row-major: BLK128x128). k must be a multiple of 128, n
  /// of 16 and k / 128 of 4 (the scale rows' alignment); Unimplemented when
  /// the library has no algorithm for the shape or refuses the
  /// configuration before running anything (the caller keeps its own
  /// kernel).
  absl::Status gemmFp8(CUstream stream, int64_t m, int64_t n, int64_t k,
                       CUdeviceptr xCodes, CUdeviceptr xScale, CUdeviceptr w,
                       CUdeviceptr wScale, CUdeviceptr out,
                       CUdeviceptr workspace, size_t workspaceBytes);

  /// Whether gemmFp8 takes these dimensions.
  static bool fp8Shape(int64_t n, int64_t k) {
    return k % 128 == 0 && (k / 128) % 4 == 0 && n % 16 == 0;
  }

private:
  BlasLt() = default;
  absl::Status check(cublasStatus_t status, const char *what) const;
  enum class Operands { Bf16, Fp8BlockScaled };
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using PlanKey = std::tuple<Operands, int64_t, int64_t, int64_t>;
  /// The cached descriptors and algorithm of a TN GEMM (made on first use;
  /// FP8: with this call's scale pointers set before the algorithm query).
  absl::StatusOr<const Plan *> plan(Operands operands, int64_t m, int64_t n,
                                    int64_t k, size_t workspaceBytes,
                                    const void *wScale = nullptr,
                                    const void *xScale = nullptr);
  absl::Status setScales(cublasLtMatmulDesc_t desc, const void *wScale,
                         const void *xScale) const;
  absl::Status run(const Plan &p, CUstream stream, CUdeviceptr x, CUdeviceptr w,
                   CUdeviceptr out, CUdeviceptr workspace,
                   size_t workspaceBytes);
  void destroy(Plan &p) const;
  void *library_ = nullptr;
  BlasLtApi api_{};
  cublasLtHandle_t handle_ = nullptr;
  std::map<PlanKey, Plan> plans_;
};

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_CUBLASLT_H
