#include "support/AtomicFile.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <unistd.h>

namespace kiln {
namespace {

std::string errorText(const std::string &what,
                      const std::filesystem::path &path) {
  return what + " " + path.string() + ": " + std::strerror(errno);
}

} // namespace

absl::Status writeFileAtomically(
    const std::filesystem::path &path,
    const std::function<absl::Status(
        const std::function<absl::Status(std::string_view)> &append)> &write) {
  std::filesystem::path temp = path;
  temp += ".tmp." + std::to_string(::getpid());
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return absl::UnavailableError(errorText("cannot create", temp));

  auto append = [&](std::string_view bytes) -> absl::Status {
    while (!bytes.empty()) {
      ssize_t n = ::write(fd, bytes.data(), bytes.size());
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        return absl::UnavailableError(errorText("cannot write", temp));
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  };
  absl::Status status = write(append);
  if (status.ok() && ::fsync(fd) != 0)
    status = absl::UnavailableError(errorText("cannot flush", temp));
  if (::close(fd) != 0 && status.ok())
    status = absl::UnavailableError(errorText("cannot close", temp));
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0)
    status = absl::UnavailableError(errorText("cannot rename onto", path));
  if (!status.ok())
    ::unlink(temp.c_str());
  return status;
}

absl::Status writeFileAtomically(const std::filesystem::path &path,
                                 std::string_view contents) {
  return writeFileAtomically(
      path, [&](const std::function<absl::Status(std::string_view)> &append) {
        return append(contents);
      });
}

} // namespace kiln
