// Writing files so that readers see the old content or the new, never a
// partial file: write a temporary beside the target, flush it to disk, then
// rename over the target.
#ifndef KILN_SUPPORT_ATOMICFILE_H
#define KILN_SUPPORT_ATOMICFILE_H

#include "absl/status/status.h"

#include <filesystem>
#include <functional>
#include <string_view>

namespace kiln {

/// Writes `contents` to `path` atomically. Errors name the path.
absl::Status writeFileAtomically(const std::filesystem::path &path,
                                 std::string_view contents);

/// Streams the content through `write`, which is called with a function
/// appending bytes to the temporary file; commits only if every append and
/// `write` itself succeed.
absl::Status writeFileAtomically(
    const std::filesystem::path &path,
    const std::function<absl::Status(
        const std::function<absl::Status(std::string_view)> &append)> &write);

} // namespace kiln

#endif // KILN_SUPPORT_ATOMICFILE_H
