#include "runtime/src/cuda/KernelProfiler.h"

#include "runtime/src/KernelTimes.h"

#include <algorithm>
#include <utility>

namespace kiln::cuda {

KernelProfiler::~KernelProfiler() {
  for (CUevent e : events_)
    driver_->api().cuEventDestroy(e);
}

absl::Status KernelProfiler::mark(CUstream stream, std::string kernel,
                                  int64_t weightBytes) {
  const DriverApi &a = driver_->api();
  if (marks_ == events_.size()) {
    CUevent event = nullptr;
    // Default flags: an event made with CU_EVENT_DISABLE_TIMING has no time.
    if (absl::Status s =
            driver_->check(a.cuEventCreate(&event, 0), "the kernel profile");
        !s.ok())
      return s;
    events_.push_back(event);
    kernels_.emplace_back();
    weightBytes_.push_back(-1);
  }
  if (absl::Status s = driver_->check(a.cuEventRecord(events_[marks_], stream),
                                      "the kernel profile");
      !s.ok())
    return s;
  weightBytes_[marks_] = weightBytes;
  kernels_[marks_++] = std::move(kernel);
  return absl::OkStatus();
}

absl::Status KernelProfiler::collect() {
  const DriverApi &a = driver_->api();
  size_t marks = std::exchange(marks_, 0);
  for (size_t i = 1; i < marks; ++i) {
    if (kernels_[i].empty())
      continue;
    float ms = 0;
    if (absl::Status s = driver_->check(
            a.cuEventElapsedTime(&ms, events_[i - 1], events_[i]),
            "the kernel profile's event times");
        !s.ok())
      return s;
    auto [at, added] = totals_.try_emplace(kernels_[i]);
    KernelTime &t = at->second;
    if (added) {
      t.kernel = kernels_[i];
      t.weightBytes = 0;
    }
    ++t.launches;
    t.seconds += ms / 1e3;
    // Unknown for one launch: unknown for the kernel.
    t.weightBytes = t.weightBytes < 0 || weightBytes_[i] < 0
                        ? -1
                        : t.weightBytes + weightBytes_[i];
  }
  return absl::OkStatus();
}

std::vector<KernelTime> KernelProfiler::totals() const {
  std::vector<KernelTime> times;
  for (const auto &[kernel, time] : totals_)
    times.push_back(time);
  sortLongestFirst(times);
  return times;
}

} // namespace kiln::cuda
