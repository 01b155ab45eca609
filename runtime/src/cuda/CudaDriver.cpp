#include "runtime/src/cuda/CudaDriver.h"

#include "runtime/src/cuda/DynamicSymbol.h"

#include <dlfcn.h>

#include <utility>

namespace kiln::cuda {
absl::StatusOr<Driver> Driver::load() {
  Driver driver;
  driver.library_ = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!driver.library_) {
    const char *why = ::dlerror();
    return absl::UnavailableError(
        std::string("no NVIDIA driver: cannot load libcuda.so.1 (") +
        (why ? why : "unknown error") + ")");
  }
  DriverApi &a = driver.api_;
  // Versioned names: the ABI cuda.h's macros select.
  struct Entry {
    const char *name;
    bool ok;
  };
  void *l = driver.library_;
  Entry entries[] = {
      {"cuInit", resolve(l, "cuInit", a.cuInit)},
      {"cuDriverGetVersion",
       resolve(l, "cuDriverGetVersion", a.cuDriverGetVersion)},
      {"cuGetErrorString", resolve(l, "cuGetErrorString", a.cuGetErrorString)},
      {"cuDeviceGetCount", resolve(l, "cuDeviceGetCount", a.cuDeviceGetCount)},
      {"cuDeviceGet", resolve(l, "cuDeviceGet", a.cuDeviceGet)},
      {"cuDeviceGetName", resolve(l, "cuDeviceGetName", a.cuDeviceGetName)},
      {"cuDeviceGetAttribute",
       resolve(l, "cuDeviceGetAttribute", a.cuDeviceGetAttribute)},
      {"cuDeviceTotalMem_v2",
       resolve(l, "cuDeviceTotalMem_v2", a.cuDeviceTotalMem)},
      {"cuDevicePrimaryCtxRetain",
       resolve(l, "cuDevicePrimaryCtxRetain", a.cuDevicePrimaryCtxRetain)},
      {"cuDevicePrimaryCtxRelease_v2",
       resolve(l, "cuDevicePrimaryCtxRelease_v2", a.cuDevicePrimaryCtxRelease)},
      {"cuCtxSetCurrent", resolve(l, "cuCtxSetCurrent", a.cuCtxSetCurrent)},
      {"cuMemAlloc_v2", resolve(l, "cuMemAlloc_v2", a.cuMemAlloc)},
      {"cuMemFree_v2", resolve(l, "cuMemFree_v2", a.cuMemFree)},
      {"cuMemcpyHtoD_v2", resolve(l, "cuMemcpyHtoD_v2", a.cuMemcpyHtoD)},
      {"cuMemcpyDtoH_v2", resolve(l, "cuMemcpyDtoH_v2", a.cuMemcpyDtoH)},
      {"cuMemcpyHtoDAsync_v2",
       resolve(l, "cuMemcpyHtoDAsync_v2", a.cuMemcpyHtoDAsync)},
      {"cuMemcpyDtoDAsync_v2",
       resolve(l, "cuMemcpyDtoDAsync_v2", a.cuMemcpyDtoDAsync)},
      {"cuMemsetD8Async", resolve(l, "cuMemsetD8Async", a.cuMemsetD8Async)},
      {"cuMemHostRegister_v2",
       resolve(l, "cuMemHostRegister_v2", a.cuMemHostRegister)},
      {"cuMemHostUnregister",
       resolve(l, "cuMemHostUnregister", a.cuMemHostUnregister)},
      {"cuModuleLoadData", resolve(l, "cuModuleLoadData", a.cuModuleLoadData)},
      {"cuModuleUnload", resolve(l, "cuModuleUnload", a.cuModuleUnload)},
      {"cuModuleGetFunction",
       resolve(l, "cuModuleGetFunction", a.cuModuleGetFunction)},
      {"cuFuncSetAttribute",
       resolve(l, "cuFuncSetAttribute", a.cuFuncSetAttribute)},
      {"cuLaunchKernel", resolve(l, "cuLaunchKernel", a.cuLaunchKernel)},
      {"cuStreamCreate", resolve(l, "cuStreamCreate", a.cuStreamCreate)},
      {"cuStreamDestroy_v2",
       resolve(l, "cuStreamDestroy_v2", a.cuStreamDestroy)},
      {"cuStreamSynchronize",
       resolve(l, "cuStreamSynchronize", a.cuStreamSynchronize)},
      {"cuStreamBeginCapture_v2",
       resolve(l, "cuStreamBeginCapture_v2", a.cuStreamBeginCapture)},
      {"cuStreamEndCapture",
       resolve(l, "cuStreamEndCapture", a.cuStreamEndCapture)},
      {"cuEventCreate", resolve(l, "cuEventCreate", a.cuEventCreate)},
      {"cuEventDestroy_v2", resolve(l, "cuEventDestroy_v2", a.cuEventDestroy)},
      {"cuEventRecord", resolve(l, "cuEventRecord", a.cuEventRecord)},
      {"cuStreamWaitEvent",
       resolve(l, "cuStreamWaitEvent", a.cuStreamWaitEvent)},
      {"cuGraphInstantiateWithFlags", resolve(l, "cuGraphInstantiateWithFlags",
                                              a.cuGraphInstantiateWithFlags)},
      {"cuGraphLaunch", resolve(l, "cuGraphLaunch", a.cuGraphLaunch)},
      {"cuGraphExecDestroy",
       resolve(l, "cuGraphExecDestroy", a.cuGraphExecDestroy)},
      {"cuGraphDestroy", resolve(l, "cuGraphDestroy", a.cuGraphDestroy)},
  };
  resolve(l, "cuLaunchKernelEx", a.cuLaunchKernelEx); // optional: null if not
  if (!resolve(l, "cuEventElapsedTime_v2", a.cuEventElapsedTime) &&
      !resolve(l, "cuEventElapsedTime", a.cuEventElapsedTime))
    return absl::UnavailableError("libcuda.so.1 lacks cuEventElapsedTime");
  for (const Entry &e : entries)
    if (!e.ok)
      return absl::UnavailableError(
          std::string("libcuda.so.1 lacks ") + e.name +
          " (a driver older than this runtime needs)");
  if (absl::Status s = driver.check(a.cuInit(0), "cuInit"); !s.ok())
    return absl::UnavailableError(std::string(s.message()));
  if (absl::Status s = driver.check(a.cuDriverGetVersion(&driver.version_),
                                    "cuDriverGetVersion");
      !s.ok())
    return s;
  return driver;
}

Driver::Driver(Driver &&other) noexcept
    : library_(std::exchange(other.library_, nullptr)), api_(other.api_),
      version_(other.version_) {}

Driver Driver::fromTable(const DriverApi &api, int version) {
  Driver driver;
  driver.api_ = api;
  driver.version_ = version;
  return driver;
}

Driver &Driver::operator=(Driver &&other) noexcept {
  std::swap(library_, other.library_);
  std::swap(api_, other.api_);
  std::swap(version_, other.version_);
  return *this;
}

Driver::~Driver() {
  if (library_)
    ::dlclose(library_);
}

absl::Status Driver::check(CUresult result, const std::string &what) const {
  if (result == CUDA_SUCCESS)
    return absl::OkStatus();
  const char *text = nullptr;
  if (api_.cuGetErrorString)
    api_.cuGetErrorString(result, &text);
  return absl::InternalError(what + " failed: " + (text ? text : "CUDA error") +
                             " (" + std::to_string(static_cast<int>(result)) +
                             ")");
}

absl::StatusOr<std::vector<DeviceInfo>> Driver::devices() const {
  int count = 0;
  if (absl::Status s = check(api_.cuDeviceGetCount(&count), "cuDeviceGetCount");
      !s.ok())
    return s;
  std::vector<DeviceInfo> devices;
  for (int i = 0; i < count; ++i) {
    CUdevice device;
    DeviceInfo info;
    info.ordinal = i;
    char name[256] = {};
    if (absl::Status s = check(api_.cuDeviceGet(&device, i), "cuDeviceGet");
        !s.ok())
      return s;
    absl::Status s = check(api_.cuDeviceGetName(name, sizeof(name), device),
                           "cuDeviceGetName");
    s.Update(check(api_.cuDeviceGetAttribute(
                       &info.computeMajor,
                       CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device),
                   "cuDeviceGetAttribute"));
    s.Update(check(api_.cuDeviceGetAttribute(
                       &info.computeMinor,
                       CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device),
                   "cuDeviceGetAttribute"));
    s.Update(check(api_.cuDeviceGetAttribute(
                       &info.multiprocessors,
                       CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device),
                   "cuDeviceGetAttribute"));
    s.Update(check(api_.cuDeviceTotalMem(&info.memoryBytes, device),
                   "cuDeviceTotalMem"));
    if (!s.ok())
      return s;
    info.name = name;
    devices.push_back(std::move(info));
  }
  return devices;
}

} // namespace kiln::cuda
