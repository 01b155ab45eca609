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

BlasLt::BlasLt(BlasLt &&other) noexcept
    : library_(std::exchange(other.library_, nullptr)), api_(other.api_),
      handle_(std::exchange(other.handle_, nullptr)),
      plans_(std::move(other.plans_)) {}

BlasLt::~BlasLt() {
  for (auto &[shape, plan] : plans_) {
    api_.layoutDestroy(plan.a);
    api_.layoutDestroy(plan.b);
    api_.layoutDestroy(plan.d);
    api_.descDestroy(plan.desc);
  }
  if (handle_)
    api_.destroy(handle_);
  if (library_)
    ::dlclose(library_);
}

absl::Status BlasLt::check(cublasStatus_t status, const char *what) const {
  if (status == CUBLAS_STATUS_SUCCESS)
    return absl::OkStatus();
  const char *text = api_.statusString ? api_.statusString(status) : nullptr;
  return absl::InternalError(std::string(what) +
                             " failed: " + (text ? text : "cuBLASLt error"));
}

absl::Status BlasLt::gemmBf16(CUstream stream, int64_t m, int64_t n, int64_t k,
                              CUdeviceptr x, CUdeviceptr w, CUdeviceptr out,
                              CUdeviceptr workspace, size_t workspaceBytes) {
  auto key = std::make_tuple(m, n, k);
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    Plan p;
    absl::Status s = check(
        api_.descCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "descriptor");
    cublasOperation_t transposed = CUBLAS_OP_T, plain = CUBLAS_OP_N;
    s.Update(check(api_.descSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                         &transposed, sizeof(transposed)),
                   "TRANSA"));
    s.Update(check(api_.descSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                         &plain, sizeof(plain)),
                   "TRANSB"));
    s.Update(check(api_.layoutCreate(&p.a, CUDA_R_16BF, k, n, k), "layout A"));
    s.Update(check(api_.layoutCreate(&p.b, CUDA_R_16BF, k, m, k), "layout B"));
    s.Update(check(api_.layoutCreate(&p.d, CUDA_R_32F, n, m, n), "layout D"));
    cublasLtMatmulPreference_t preference = nullptr;
    s.Update(check(api_.preferenceCreate(&preference), "preference"));
    if (s.ok())
      s.Update(check(api_.preferenceSetAttribute(
                         preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                         &workspaceBytes, sizeof(workspaceBytes)),
                     "workspace preference"));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (s.ok())
      s.Update(check(api_.algoGetHeuristic(handle_, p.desc, p.a, p.b, p.d, p.d,
                                           preference, 1, &result, &found),
                     "cublasLtMatmulAlgoGetHeuristic"));
    if (preference)
      api_.preferenceDestroy(preference);
    if (s.ok() && found == 0)
      s = absl::UnimplementedError("cuBLASLt has no algorithm for a bf16 " +
                                   std::to_string(m) + "x" + std::to_string(n) +
                                   "x" + std::to_string(k) + " GEMM");
    if (!s.ok()) {
      for (cublasLtMatrixLayout_t layout : {p.a, p.b, p.d})
        if (layout)
          api_.layoutDestroy(layout);
      if (p.desc)
        api_.descDestroy(p.desc);
      return s;
    }
    p.algo = result.algo;
    it = plans_.emplace(key, p).first;
  }
  const Plan &p = it->second;
  float one = 1.0f, zero = 0.0f;
  return check(api_.matmul(handle_, p.desc, &one,
                           reinterpret_cast<const void *>(w), p.a,
                           reinterpret_cast<const void *>(x), p.b, &zero,
                           reinterpret_cast<const void *>(out), p.d,
                           reinterpret_cast<void *>(out), p.d, &p.algo,
                           reinterpret_cast<void *>(workspace), workspaceBytes,
                           reinterpret_cast<cudaStream_t>(stream)),
               "cublasLtMatmul");
}

} // namespace kiln::cuda
