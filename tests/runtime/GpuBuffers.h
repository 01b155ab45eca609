// Device memory for the GPU tests (label gpu) of the CUDA executor's
// pieces: a context and stream on device 0, uploads, downloads, and every
// allocation freed with it.
#ifndef KILN_TESTS_RUNTIME_GPU_BUFFERS_H
#define KILN_TESTS_RUNTIME_GPU_BUFFERS_H

#include "runtime/src/cuda/CudaDriver.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

namespace kiln::cuda {

/// A context and stream on device 0, and the device memory it allocates.
class Gpu {
public:
  explicit Gpu(Driver &driver) : d_(driver) {}
  ~Gpu() {
    for (CUdeviceptr p : buffers_)
      d_.api().cuMemFree(p);
    if (stream_)
      d_.api().cuStreamDestroy(stream_);
  }
  absl::Status init() {
    const DriverApi &a = d_.api();
    CUdevice device = 0;
    CUcontext context = nullptr;
    absl::Status s = d_.check(a.cuDeviceGet(&device, 0), "cuDeviceGet");
    if (s.ok())
      s = d_.check(a.cuDevicePrimaryCtxRetain(&context, device), "context");
    if (s.ok())
      s = d_.check(a.cuCtxSetCurrent(context), "cuCtxSetCurrent");
    if (s.ok())
      s = d_.check(a.cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING),
                   "cuStreamCreate");
    return s;
  }
  CUdeviceptr upload(const void *data, size_t bytes) {
    CUdeviceptr p = allocate(bytes);
    EXPECT_TRUE(d_.check(d_.api().cuMemcpyHtoD(p, data, bytes), "upload").ok());
    return p;
  }
  CUdeviceptr allocate(size_t bytes) {
    CUdeviceptr p = 0;
    EXPECT_TRUE(d_.check(d_.api().cuMemAlloc(&p, bytes), "cuMemAlloc").ok());
    buffers_.push_back(p);
    return p;
  }
  std::vector<float> download(CUdeviceptr p, size_t count) {
    std::vector<float> out(count);
    EXPECT_TRUE(d_.check(d_.api().cuStreamSynchronize(stream_), "sync").ok());
    EXPECT_TRUE(
        d_.check(d_.api().cuMemcpyDtoH(out.data(), p, count * sizeof(float)),
                 "download")
            .ok());
    return out;
  }
  CUstream stream() const { return stream_; }

private:
  Driver &d_;
  CUstream stream_ = nullptr;
  std::vector<CUdeviceptr> buffers_;
};

/// Opens device 0 through `loaded` (a driver, or why there is none) into
/// `driver` and `gpu`. Returns why a GPU test must skip, or nothing.
inline std::string openGpu(absl::StatusOr<Driver> loaded,
                           std::optional<Driver> &driver,
                           std::optional<Gpu> &gpu) {
  if (!loaded.ok())
    return "no CUDA here: " + std::string(loaded.status().message());
  absl::StatusOr<std::vector<DeviceInfo>> devices = loaded->devices();
  if (!devices.ok() || devices->empty())
    return "the NVIDIA driver sees no GPU";
  driver.emplace(*std::move(loaded));
  gpu.emplace(*driver);
  absl::Status s = gpu->init();
  EXPECT_TRUE(s.ok()) << s.message();
  return "";
}

} // namespace kiln::cuda

#endif // KILN_TESTS_RUNTIME_GPU_BUFFERS_H
