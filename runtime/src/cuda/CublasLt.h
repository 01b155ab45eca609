// cuBLASLt, loaded at run time with dlopen through a table of entry points
// (like the driver, CudaDriver.h): the CUDA executor's dense bf16 GEMMs for
// many rows (prefill, large decode batches). Nothing links against
// libcublasLt; where it is missing the executor keeps its own GEMM kernels.
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
  BlasLt(BlasLt &&other) noexcept;
  BlasLt &operator=(BlasLt &&) = delete;
  BlasLt(const BlasLt &) = delete;
  ~BlasLt();

  /// out[m, n] (row-major f32) = x[m, k] (row-major bf16) . w[n, k]^T
  /// (row-major bf16), fp32 accumulation. In cuBLASLt's column-major terms
  /// out^T [n, m] = op(W) [n, k] . op(X) [k, m]: W is a column-major
  /// [k, n] matrix (lda = k) taken transposed, X a column-major [k, m]
  /// matrix (ldb = k) as is, D column-major [n, m] (ldd = n): the "TN"
  /// layout. Descriptors and the chosen algorithm are cached per shape, so
  /// repeated calls (and CUDA graph capture) only enqueue the GEMM.
  absl::Status gemmBf16(CUstream stream, int64_t m, int64_t n, int64_t k,
                        CUdeviceptr x, CUdeviceptr w, CUdeviceptr out,
                        CUdeviceptr workspace, size_t workspaceBytes);

private:
  BlasLt() = default;
  absl::Status check(cublasStatus_t status, const char *what) const;
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  void *library_ = nullptr;
  BlasLtApi api_{};
  cublasLtHandle_t handle_ = nullptr;
  std::map<std::tuple<int64_t, int64_t, int64_t>, Plan> plans_;
};

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_CUBLASLT_H
