//===- Device.cpp - which device runs an artifact -------------------------===//
#include "tools/kiln/Device.h"

#ifdef KILN_HAVE_CUDA
#include "runtime/src/cuda/CudaDriver.h"
#endif

namespace kiln::tools {

std::string deviceNote(const ModelInfo &info) {
  if (info.gpuCode.empty())
    return "";
  std::string arches;
  for (const ModelInfo::GpuCode &g : info.gpuCode)
    arches += (arches.empty() ? "" : ", ") + g.arch;
  std::string why;
#ifdef KILN_HAVE_CUDA
  absl::StatusOr<cuda::Driver> driver = cuda::Driver::load();
  absl::StatusOr<std::vector<cuda::DeviceInfo>> devices =
      driver.ok() ? driver->devices() : driver.status();
  if (!devices.ok())
    why = std::string(devices.status().message());
  else if (devices->empty())
    why = "the driver sees no GPU";
  else
    why = devices->front().name + " (sm_" +
          std::to_string(devices->front().computeMajor) +
          std::to_string(devices->front().computeMinor) +
          ") is here, but this runtime has no CUDA executor yet";
#else
  why = "this kiln was built without CUDA";
#endif
  return "kiln: running on the CPU; the artifact's " + arches +
         " code is not used: " + why;
}

} // namespace kiln::tools
