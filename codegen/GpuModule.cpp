//===- GpuModule.cpp - fused kernels compiled for a GPU -------------------===//
#include "codegen/GpuModule.h"

#include "codegen/FusedKernelEmitter.h"
#include "codegen/Nvrtc.h"

namespace kiln::codegen {

absl::Status addGpuModule(mlir::ModuleOp module, artifact::ModelT &plan,
                          const std::string &arch) {
  auto gpu = std::make_unique<artifact::GpuModuleT>();
  gpu->arch = arch;
  std::string source;
  bool failed = false;
  for (mlir::kiln::FusedOp fused : entryFusedGroups(module)) {
    mlir::FailureOr<FusedKernel> kernel = emitFusedKernel(fused);
    if (mlir::failed(kernel)) {
      failed = true;
      continue;
    }
    source += kernel->source;
    auto k = std::make_unique<artifact::GpuKernelT>();
    k->name = kernel->cudaEntry;
    k->block_threads = kernel->blockThreads;
    k->scratch_bytes =
        static_cast<uint32_t>(kernel->scratchFloats * sizeof(float));
    k->args = static_cast<uint32_t>(kernel->args.size());
    gpu->kernels.push_back(std::move(k));
  }
  if (failed)
    return absl::InvalidArgumentError(
        "a fused group has no generated kernel (see the diagnostics)");
  if (gpu->kernels.empty())
    return absl::InvalidArgumentError(
        "--target=" + arch +
        ": the entry points have no fused groups to "
        "compile (--no-fuse?)");
  absl::StatusOr<CudaBinary> binary =
      compileCuda(source, "kiln_fused_" + arch + ".cu", arch,
                  {{kFusedPreludeName, fusedPreludeSource()}});
  if (!binary.ok())
    return absl::Status(binary.status().code(),
                        "--target=" + arch + ": " +
                            std::string(binary.status().message()));
  gpu->cubin.assign(binary->cubin.begin(), binary->cubin.end());
  gpu->ptx = std::move(binary->ptx);
  plan.gpu_modules.push_back(std::move(gpu));
  return absl::OkStatus();
}

} // namespace kiln::codegen
