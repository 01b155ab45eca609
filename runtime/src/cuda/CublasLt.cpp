#include "runtime/src/cuda/CublasLt.h"

#include "runtime/src/cuda/DynamicSymbol.h"

#include <dlfcn.h>

#include <string>
#include <utility>

namespace kiln::cuda {
absl::StatusOr<BlasLt> BlasLt::load() {
  BlasLt blas;
  for (const char *name :
       {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"})
    if ((blas.library_ = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)))
      break;
  if (!blas.library_)
    return absl::UnavailableError("cannot load libcublasLt.so.13 (or .12)");
  BlasLtApi &a = blas.api_;
  void *l = blas.library_;
  std::pair<const char *, bool> entries[] = {
      {"cublasLtCreate", resolve(l, "cublasLtCreate", a.create)},
      {"cublasLtDestroy", resolve(l, "cublasLtDestroy", a.destroy)},
      {"cublasLtGetStatusString",
       resolve(l, "cublasLtGetStatusString", a.statusString)},
      {"cublasLtMatmulDescCreate",
       resolve(l, "cublasLtMatmulDescCreate", a.descCreate)},
      {"cublasLtMatmulDescDestroy",
       resolve(l, "cublasLtMatmulDescDestroy", a.descDestroy)},
      {"cublasLtMatmulDescSetAttribute",
       resolve(l, "cublasLtMatmulDescSetAttribute", a.descSetAttribute)},
      {"cublasLtMatrixLayoutCreate",
       resolve(l, "cublasLtMatrixLayoutCreate", a.layoutCreate)},
      {"cublasLtMatrixLayoutDestroy",
       resolve(l, "cublasLtMatrixLayoutDestroy", a.layoutDestroy)},
      {"cublasLtMatmulPreferenceCreate",
       resolve(l, "cublasLtMatmulPreferenceCreate", a.preferenceCreate)},
      {"cublasLtMatmulPreferenceDestroy",
       resolve(l, "cublasLtMatmulPreferenceDestroy", a.preferenceDestroy)},
      {"cublasLtMatmulPreferenceSetAttribute",
       resolve(l, "cublasLtMatmulPreferenceSetAttribute",
               a.preferenceSetAttribute)},
      {"cublasLtMatmulAlgoGetHeuristic",
       resolve(l, "cublasLtMatmulAlgoGetHeuristic", a.algoGetHeuristic)},
      {"cublasLtMatmul", resolve(l, "cublasLtMatmul", a.matmul)},
  };
  for (auto [name, found] : entries)
    if (!found)
      return absl::UnavailableError(std::string("libcublasLt lacks ") + name);
  if (absl::Status s = blas.check(a.create(&blas.handle_), "cublasLtCreate");
      !s.ok())
    return absl::UnavailableError(s.message());
  return blas;
}

absl::StatusOr<BlasLt> BlasLt::fromApi(const BlasLtApi &api) {
  BlasLt blas;
  blas.api_ = api;
  if (absl::Status s = blas.check(api.create(&blas.handle_), "cublasLtCreate");
      !s.ok())
    return absl::UnavailableError(s.message());
  return blas;
}

BlasLt::BlasLt(BlasLt &&other) noexcept
    : library_(std::exchange(other.library_, nullptr)), api_(other.api_),
      handle_(std::exchange(other.handle_, nullptr)),
      plans_(std::move(other.plans_)) {}

BlasLt::~BlasLt() {
  for (auto &[key, plan] : plans_)
    destroy(plan);
  if (handle_)
    api_.destroy(handle_);
  if (library_)
    ::dlclose(library_);
}

void BlasLt::destroy(Plan &p) const {
  for (cublasLtMatrixLayout_t layout : {p.a, p.b, p.d})
    if (layout)
      api_.layoutDestroy(layout);
  if (p.desc)
    api_.descDestroy(p.desc);
}

absl::Status BlasLt::check(cublasStatus_t status, const char *what) const {
  if (status == CUBLAS_STATUS_SUCCESS)
    return absl::OkStatus();
  const char *text = api_.statusString ? api_.statusString(status) : nullptr;
  return absl::InternalError(std::string(what) +
                             " failed: " + (text ? text : "cuBLASLt error"));
}

absl::StatusOr<const BlasLt::Plan *>
BlasLt::plan(Operands operands, int64_t m, int64_t n, int64_t k,
             size_t workspaceBytes, const void *wScale, const void *xScale) {
  PlanKey key{operands, m, n, k};
  if (auto it = plans_.find(key); it != plans_.end())
    return &it->second;
  bool fp8 = operands == Operands::Fp8BlockScaled;
  cudaDataType input = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  Plan p;
  absl::Status s = check(
      api_.descCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "descriptor");
  auto set = [&](cublasLtMatmulDescAttributes_t attribute, int32_t value,
                 const char *what) {
    if (s.ok())
      s.Update(
          check(api_.descSetAttribute(p.desc, attribute, &value, sizeof(value)),
                what));
  };
  set(CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T, "TRANSA");
  set(CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N, "TRANSB");
  if (fp8) {
    // A is the weight (128x128 blocks), B the activations (1x128).
    set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
        CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, "A scale mode");
    set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
        CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, "B scale mode");
    if (s.ok())
      s.Update(setScales(p.desc, wScale, xScale));
  }
  if (s.ok())
    s.Update(check(api_.layoutCreate(&p.a, input, k, n, k), "layout A"));
  if (s.ok())
    s.Update(check(api_.layoutCreate(&p.b, input, k, m, k), "layout B"));
  if (s.ok())
    s.Update(check(api_.layoutCreate(&p.d, CUDA_R_32F, n, m, n), "layout D"));
  cublasLtMatmulPreference_t preference = nullptr;
  if (s.ok())
    s.Update(check(api_.preferenceCreate(&preference), "preference"));
  if (s.ok())
    s.Update(check(api_.preferenceSetAttribute(
                       preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                       &workspaceBytes, sizeof(workspaceBytes)),
                   "workspace preference"));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (s.ok()) {
    cublasStatus_t status = api_.algoGetHeuristic(
        handle_, p.desc, p.a, p.b, p.d, p.d, preference, 1, &result, &found);
    // No algorithm for this configuration: the caller's own kernel runs it.
    // (cuBLASLt reports scale modes it does not take with these types as
    // invalid values.)
    if (status == CUBLAS_STATUS_NOT_SUPPORTED ||
        (fp8 && status == CUBLAS_STATUS_INVALID_VALUE))
      found = 0;
    else
      s.Update(check(status, "cublasLtMatmulAlgoGetHeuristic"));
  }
  if (preference)
    api_.preferenceDestroy(preference);
  if (s.ok() && found == 0)
    s = absl::UnimplementedError(
        std::string("cuBLASLt has no algorithm for a ") +
        (fp8 ? "block-scaled FP8 " : "bf16 ") + std::to_string(m) + "x" +
        std::to_string(n) + "x" + std::to_string(k) + " GEMM");
  if (!s.ok()) {
    destroy(p);
    return s;
  }
  p.algo = result.algo;
  return &plans_.emplace(key, p).first->second;
}

absl::Status BlasLt::setScales(cublasLtMatmulDesc_t desc, const void *wScale,
                               const void *xScale) const {
  absl::Status s =
      check(api_.descSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                  &wScale, sizeof(wScale)),
            "A scale pointer");
  s.Update(
      check(api_.descSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                  &xScale, sizeof(xScale)),
            "B scale pointer"));
  return s;
}

absl::Status BlasLt::run(const Plan &p, CUstream stream, CUdeviceptr x,
                         CUdeviceptr w, CUdeviceptr out, CUdeviceptr workspace,
                         size_t workspaceBytes) {
  float one = 1.0f, zero = 0.0f;
  cublasStatus_t status = api_.matmul(
      handle_, p.desc, &one, reinterpret_cast<const void *>(w), p.a,
      reinterpret_cast<const void *>(x), p.b, &zero,
      reinterpret_cast<const void *>(out), p.d, reinterpret_cast<void *>(out),
      p.d, &p.algo, reinterpret_cast<void *>(workspace), workspaceBytes,
      reinterpret_cast<cudaStream_t>(stream));
  // Refused before anything ran (a configuration this library or GPU does
  // not take): the caller may run its own kernel instead.
  if (status == CUBLAS_STATUS_NOT_SUPPORTED ||
      status == CUBLAS_STATUS_ARCH_MISMATCH)
    return absl::UnimplementedError(check(status, "cublasLtMatmul").message());
  return check(status, "cublasLtMatmul");
}

absl::Status BlasLt::prepareBf16(int64_t m, int64_t n, int64_t k,
                                 size_t workspaceBytes) {
  return plan(Operands::Bf16, m, n, k, workspaceBytes).status();
}

absl::Status BlasLt::gemmBf16(CUstream stream, int64_t m, int64_t n, int64_t k,
                              CUdeviceptr x, CUdeviceptr w, CUdeviceptr out,
                              CUdeviceptr workspace, size_t workspaceBytes) {
  absl::StatusOr<const Plan *> p =
      plan(Operands::Bf16, m, n, k, workspaceBytes);
  if (!p.ok())
    return p.status();
  return run(**p, stream, x, w, out, workspace, workspaceBytes);
}

absl::Status BlasLt::gemmFp8(CUstream stream, int64_t m, int64_t n, int64_t k,
                             CUdeviceptr xCodes, CUdeviceptr xScale,
                             CUdeviceptr w, CUdeviceptr wScale, CUdeviceptr out,
                             CUdeviceptr workspace, size_t workspaceBytes) {
  if (!fp8Shape(n, k))
    return absl::UnimplementedError(
        "block-scaled FP8 GEMM with n = " + std::to_string(n) +
        ", k = " + std::to_string(k) + " (needs k % 512 == 0, n % 16 == 0)");
  const void *a = reinterpret_cast<const void *>(wScale);
  const void *b = reinterpret_cast<const void *>(xScale);
  absl::StatusOr<const Plan *> p =
      plan(Operands::Fp8BlockScaled, m, n, k, workspaceBytes, a, b);
  if (!p.ok())
    return p.status();
  // The scale pointers are arguments of this call (a plan serves every
  // weight of its shape); cuBLASLt reads them when the GEMM is enqueued.
  if (absl::Status s = setScales((*p)->desc, a, b); !s.ok())
    return s;
  return run(**p, stream, xCodes, w, out, workspace, workspaceBytes);
}

} // namespace kiln::cuda
