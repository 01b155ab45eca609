// The CUDA driver API, loaded at run time with dlopen through a table of
// entry points, so that one runtime binary runs where there is no NVIDIA
// driver or no GPU and says so instead of failing to start. Only cuda.h's
// types are used at build time; nothing links against libcuda.
#ifndef KILN_RUNTIME_CUDA_CUDADRIVER_H
#define KILN_RUNTIME_CUDA_CUDADRIVER_H

#include "absl/status/statusor.h"

#include <cuda.h>

#include <string>
#include <vector>

namespace kiln::cuda {

/// The driver entry points the runtime calls, by their versioned ABI names
/// (cuda.h's macros map e.g. cuMemAlloc to cuMemAlloc_v2).
struct DriverApi {
  CUresult (*cuInit)(unsigned int);
  CUresult (*cuDriverGetVersion)(int *);
  CUresult (*cuGetErrorString)(CUresult, const char **);
  CUresult (*cuDeviceGetCount)(int *);
  CUresult (*cuDeviceGet)(CUdevice *, int);
  CUresult (*cuDeviceGetName)(char *, int, CUdevice);
  CUresult (*cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
  CUresult (*cuDeviceTotalMem)(size_t *, CUdevice);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*cuDevicePrimaryCtxRelease)(CUdevice);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
  CUresult (*cuMemFree)(CUdeviceptr);
  CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void *, size_t);
  CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t);
  CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
  CUresult (*cuMemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
  CUresult (*cuMemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
  CUresult (*cuMemHostRegister)(void *, size_t, unsigned);
  CUresult (*cuMemHostUnregister)(void *);
  CUresult (*cuModuleLoadData)(CUmodule *, const void *);
  CUresult (*cuModuleUnload)(CUmodule);
  CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*cuFuncSetAttribute)(CUfunction, CUfunction_attribute, int);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, unsigned, CUstream, void **,
                             void **);
  /// Optional (null when the driver lacks it): launches with attributes,
  /// for programmatic dependent launch.
  CUresult (*cuLaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **,
                               void **);
  CUresult (*cuStreamCreate)(CUstream *, unsigned int);
  CUresult (*cuStreamDestroy)(CUstream);
  CUresult (*cuStreamSynchronize)(CUstream);
  CUresult (*cuStreamBeginCapture)(CUstream, CUstreamCaptureMode);
  CUresult (*cuStreamEndCapture)(CUstream, CUgraph *);
  CUresult (*cuEventCreate)(CUevent *, unsigned int);
  CUresult (*cuEventDestroy)(CUevent);
  CUresult (*cuEventRecord)(CUevent, CUstream);
  /// cuEventElapsedTime_v2, or the first version where the driver lacks it
  /// (the same signature: milliseconds between two completed records).
  CUresult (*cuEventElapsedTime)(float *, CUevent, CUevent);
  CUresult (*cuStreamWaitEvent)(CUstream, CUevent, unsigned int);
  CUresult (*cuGraphInstantiateWithFlags)(CUgraphExec *, CUgraph,
                                          unsigned long long);
  CUresult (*cuGraphLaunch)(CUgraphExec, CUstream);
  CUresult (*cuGraphExecDestroy)(CUgraphExec);
  CUresult (*cuGraphDestroy)(CUgraph);
};

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int computeMajor = 0, computeMinor = 0;
  int multiprocessors = 0;
  size_t memoryBytes = 0;
};

/// The loaded driver library and its entry points.
class Driver {
public:
  /// Loads libcuda.so.1 and calls cuInit. Unavailable, with the reason
  /// (no driver library, a missing entry point, or cuInit's error such as
  /// CUDA_ERROR_NO_DEVICE), when CUDA cannot be used here.
  static absl::StatusOr<Driver> load();
  /// A driver whose entry points are `api` (no library loaded): the
  /// executor's host emulation (EmulatedDriver.h).
  static Driver fromTable(const DriverApi &api, int version);

  Driver(Driver &&other) noexcept;
  Driver &operator=(Driver &&other) noexcept;
  Driver(const Driver &) = delete;
  Driver &operator=(const Driver &) = delete;
  ~Driver();

  const DriverApi &api() const { return api_; }
  int version() const { return version_; }
  absl::StatusOr<std::vector<DeviceInfo>> devices() const;
  /// An error naming `what` and the driver's text for `result`; OK for
  /// CUDA_SUCCESS.
  absl::Status check(CUresult result, const std::string &what) const;

private:
  Driver() = default;
  void *library_ = nullptr;
  DriverApi api_{};
  int version_ = 0;
};

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_CUDADRIVER_H
