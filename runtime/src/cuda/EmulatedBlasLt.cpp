#include "runtime/src/cuda/EmulatedBlasLt.h"

#include "kiln/Float.h"
#include "runtime/src/cuda/EmulatedDriver.h"

#include <atomic>
#include <cstring>
#include <vector>

namespace kiln::cuda {
namespace {

struct Desc {
  int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  int32_t aMode = CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
  int32_t bMode = CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
  const float *aScale = nullptr, *bScale = nullptr;
};

struct Layout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};

std::atomic<int64_t> bf16Calls{0}, fp8Calls{0};

Desc *desc(cublasLtMatmulDesc_t d) { return reinterpret_cast<Desc *>(d); }
const Layout *layout(cublasLtMatrixLayout_t l) {
  return reinterpret_cast<const Layout *>(l);
}

/// The TN GEMMs BlasLt makes: bf16 x bf16, or block-scaled e4m3 x e4m3,
/// into f32.
bool supported(const Desc &d, const Layout &a, const Layout &b,
               const Layout &out) {
  if (d.transa != CUBLAS_OP_T || d.transb != CUBLAS_OP_N ||
      out.type != CUDA_R_32F || a.type != b.type || a.rows != b.rows)
    return false;
  if (a.type == CUDA_R_16BF)
    return d.aMode == CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F &&
           d.bMode == CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
  return a.type == CUDA_R_8F_E4M3 &&
         d.aMode == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F &&
         d.bMode == CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F &&
         a.rows % 128 == 0;
}

float element(const Layout &l, const void *data, int64_t i) {
  if (l.type == CUDA_R_16BF)
    return bf16ToFloat(static_cast<const uint16_t *>(data)[i]);
  return e4m3ToFloat(static_cast<const uint8_t *>(data)[i]);
}

/// D = scale * A^T B (block-scaled for e4m3) in fp32, as `matmul` checked
/// the operands.
void gemm(const Desc &d, const Layout &a, const Layout &b, const Layout &out,
          float scale, const void *aData, const void *bData, float *dOut) {
  // A: k x n (taken transposed), B: k x m, D: n x m, all column-major.
  int64_t k = static_cast<int64_t>(a.rows), n = static_cast<int64_t>(a.cols),
          m = static_cast<int64_t>(b.cols);
  bool fp8 = a.type == CUDA_R_8F_E4M3;
  (fp8 ? fp8Calls : bf16Calls)++;
  int64_t kBlocks = (k + 127) / 128;
  // Weight scales [n / 128][k / 128] with rows padded to 4; activation
  // scales [k / 128][m] with columns padded to 4 (BlasLt::gemmFp8).
  int64_t aScaleStride = (kBlocks + 3) / 4 * 4;
  int64_t bScaleStride = (m + 3) / 4 * 4;
#pragma omp parallel for collapse(2)
  for (int64_t j = 0; j < m; ++j)
    for (int64_t i = 0; i < n; ++i) {
      float total = 0.0f;
      for (int64_t kb = 0; kb < kBlocks; ++kb) {
        float block = 0.0f;
        for (int64_t c = kb * 128; c < k && c < (kb + 1) * 128; ++c)
          block +=
              element(a, aData, i * a.ld + c) * element(b, bData, j * b.ld + c);
        if (fp8)
          block *= d.aScale[(i / 128) * aScaleStride + kb] *
                   d.bScale[kb * bScaleStride + j];
        total += block;
      }
      dOut[i + j * out.ld] = scale * total;
    }
}

cublasStatus_t
matmul(cublasLtHandle_t, cublasLtMatmulDesc_t descriptor, const void *alpha,
       const void *aData, cublasLtMatrixLayout_t aDesc, const void *bData,
       cublasLtMatrixLayout_t bDesc, const void *, const void *,
       cublasLtMatrixLayout_t, void *dData, cublasLtMatrixLayout_t dDesc,
       const cublasLtMatmulAlgo_t *, void *, size_t, cudaStream_t stream) {
  const Desc &d = *desc(descriptor);
  const Layout &a = *layout(aDesc), &b = *layout(bDesc), &out = *layout(dDesc);
  if (!supported(d, a, b, out))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  // Stream work, as the emulated driver's kernels: run when the stream is
  // waited for, or, inside a captured decode step, by every replay. The
  // descriptors are copied (the caller may change or free them) and alpha read
  // now (host pointer mode).
  float scale = *static_cast<const float *>(alpha);
  emulatedEnqueue(
      [d, a, b, out, scale, aData, bData, dOut = static_cast<float *>(dData)] {
        gemm(d, a, b, out, scale, aData, bData, dOut);
      },
      stream);
  return CUBLAS_STATUS_SUCCESS;
}

} // namespace

BlasLtApi emulatedBlasLtApi(bool declineEverything) {
  BlasLtApi api{};
  api.create = [](cublasLtHandle_t *h) {
    *h = reinterpret_cast<cublasLtHandle_t>(uintptr_t{1});
    return CUBLAS_STATUS_SUCCESS;
  };
  api.destroy = [](cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; };
  api.statusString = [](cublasStatus_t) {
    return "emulated cuBLASLt: not supported";
  };
  api.descCreate = [](cublasLtMatmulDesc_t *d, cublasComputeType_t,
                      cudaDataType_t) {
    *d = reinterpret_cast<cublasLtMatmulDesc_t>(new Desc);
    return CUBLAS_STATUS_SUCCESS;
  };
  api.descDestroy = [](cublasLtMatmulDesc_t d) {
    delete desc(d);
    return CUBLAS_STATUS_SUCCESS;
  };
  api.descSetAttribute = [](cublasLtMatmulDesc_t d,
                            cublasLtMatmulDescAttributes_t attribute,
                            const void *value, size_t) {
    Desc &s = *desc(d);
    switch (attribute) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      std::memcpy(&s.transa, value, sizeof(int32_t));
      break;
    case CUBLASLT_MATMUL_DESC_TRANSB:
      std::memcpy(&s.transb, value, sizeof(int32_t));
      break;
    case CUBLASLT_MATMUL_DESC_A_SCALE_MODE:
      std::memcpy(&s.aMode, value, sizeof(int32_t));
      break;
    case CUBLASLT_MATMUL_DESC_B_SCALE_MODE:
      std::memcpy(&s.bMode, value, sizeof(int32_t));
      break;
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER:
      std::memcpy(&s.aScale, value, sizeof(void *));
      break;
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER:
      std::memcpy(&s.bScale, value, sizeof(void *));
      break;
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return CUBLAS_STATUS_SUCCESS;
  };
  api.layoutCreate = [](cublasLtMatrixLayout_t *l, cudaDataType type,
                        uint64_t rows, uint64_t cols, int64_t ld) {
    *l = reinterpret_cast<cublasLtMatrixLayout_t>(
        new Layout{type, rows, cols, ld});
    return CUBLAS_STATUS_SUCCESS;
  };
  api.layoutDestroy = [](cublasLtMatrixLayout_t l) {
    delete layout(l);
    return CUBLAS_STATUS_SUCCESS;
  };
  api.preferenceCreate = [](cublasLtMatmulPreference_t *p) {
    *p = reinterpret_cast<cublasLtMatmulPreference_t>(uintptr_t{1});
    return CUBLAS_STATUS_SUCCESS;
  };
  api.preferenceDestroy = [](cublasLtMatmulPreference_t) {
    return CUBLAS_STATUS_SUCCESS;
  };
  api.preferenceSetAttribute =
      [](cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
         const void *, size_t) { return CUBLAS_STATUS_SUCCESS; };
  api.algoGetHeuristic =
      [](cublasLtHandle_t, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
         cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t,
         cublasLtMatrixLayout_t out, cublasLtMatmulPreference_t, int,
         cublasLtMatmulHeuristicResult_t results[], int *found) {
        *found = supported(*desc(d), *layout(a), *layout(b), *layout(out));
        if (*found)
          results[0] = cublasLtMatmulHeuristicResult_t{};
        return CUBLAS_STATUS_SUCCESS;
      };
  if (declineEverything)
    api.algoGetHeuristic = [](cublasLtHandle_t, cublasLtMatmulDesc_t,
                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                              cublasLtMatmulPreference_t, int,
                              cublasLtMatmulHeuristicResult_t[], int *found) {
      *found = 0;
      return CUBLAS_STATUS_SUCCESS;
    };
  api.matmul = matmul;
  return api;
}

EmulatedBlasLtCalls emulatedBlasLtCalls() {
  return {bf16Calls.load(), fp8Calls.load()};
}

} // namespace kiln::cuda
