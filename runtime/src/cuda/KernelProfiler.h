// The CUDA executor's kernel profile (Session::setKernelProfiling): a CUDA
// event after each launch of a step, so that the time between two events
// is the kernel the second one follows, on the GPU's clock.
#ifndef KILN_RUNTIME_CUDA_KERNELPROFILER_H
#define KILN_RUNTIME_CUDA_KERNELPROFILER_H

#include "kiln/Runtime.h"
#include "runtime/src/cuda/CudaDriver.h"

#include "absl/status/status.h"

#include <map>
#include <string>
#include <vector>

namespace kiln::cuda {

class KernelProfiler {
public:
  explicit KernelProfiler(const Driver &driver) : driver_(&driver) {}
  ~KernelProfiler();
  KernelProfiler(const KernelProfiler &) = delete;
  KernelProfiler &operator=(const KernelProfiler &) = delete;

  /// Records the next event of the step on `stream`: the time since the
  /// mark before it is `kernel`'s, which read `weightBytes` of weights (-1:
  /// unknown); an empty name leaves that time out (the step's first mark,
  /// one after a hold). Events are made as the marks need them and reused
  /// by later steps.
  absl::Status mark(CUstream stream, std::string kernel,
                    int64_t weightBytes = -1);
  /// After the stream has run the step's marks: adds each interval to its
  /// kernel's total, and starts the next step's marks.
  absl::Status collect();
  /// Drops the step's marks without counting them (a step that failed).
  void discard() { marks_ = 0; }

  /// The totals, the longest first.
  std::vector<KernelTime> totals() const;
  void reset() { totals_.clear(); }

private:
  const Driver *driver_;
  std::vector<CUevent> events_;
  /// The kernel each used event ends and its weight bytes, for the first
  /// marks_ events.
  std::vector<std::string> kernels_;
  std::vector<int64_t> weightBytes_;
  size_t marks_ = 0;
  std::map<std::string, KernelTime> totals_;
};

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_KERNELPROFILER_H
