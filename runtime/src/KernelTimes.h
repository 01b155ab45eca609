// The order a kernel profile is reported in, on either device.
#ifndef KILN_RUNTIME_KERNELTIMES_H
#define KILN_RUNTIME_KERNELTIMES_H

#include "kiln/Runtime.h"

#include <algorithm>
#include <vector>

namespace kiln {

/// The longest first; ties by name, so that the order does not depend on
/// the sort.
inline void sortLongestFirst(std::vector<KernelTime> &times) {
  std::sort(times.begin(), times.end(),
            [](const KernelTime &a, const KernelTime &b) {
              return a.seconds != b.seconds ? a.seconds > b.seconds
                                            : a.kernel < b.kernel;
            });
}

} // namespace kiln

#endif // KILN_RUNTIME_KERNELTIMES_H
