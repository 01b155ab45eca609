// The CUDA driver loaded at run time: without a driver or a GPU, load()
// says which is missing (and the test is skipped, naming the reason); with
// one, it lists devices with their compute capability and memory.
#include "runtime/src/cuda/CudaDriver.h"

#include "gtest/gtest.h"

namespace kiln::cuda {
namespace {

TEST(CudaDriver, LoadsOrSaysWhyNot) {
  absl::StatusOr<Driver> driver = Driver::load();
  if (!driver.ok()) {
    EXPECT_EQ(driver.status().code(), absl::StatusCode::kUnavailable);
    std::string why(driver.status().message());
    EXPECT_TRUE(why.find("libcuda.so.1") != std::string::npos ||
                why.find("cuInit failed") != std::string::npos)
        << why;
    GTEST_SKIP() << "no CUDA here: " << why;
  }
  EXPECT_GE(driver->version(), 12000);
  absl::StatusOr<std::vector<DeviceInfo>> devices = driver->devices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_FALSE(devices->empty());
  for (const DeviceInfo &d : *devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GE(d.computeMajor, 7);
    EXPECT_GT(d.multiprocessors, 0);
    EXPECT_GT(d.memoryBytes, size_t{1} << 30);
  }
}

} // namespace
} // namespace kiln::cuda
