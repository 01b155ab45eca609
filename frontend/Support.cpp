#include "frontend/Support.h"

#include "absl/strings/str_cat.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace kiln::frontend::detail {

absl::StatusOr<std::string> readFile(const std::filesystem::path &path) {
  auto failure = [&](int err) {
    return absl::NotFoundError(
        absl::StrCat("cannot read ", path.string(), ": ", std::strerror(err)));
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return failure(errno);
  std::string content;
  char buffer[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return failure(err);
    }
    if (n == 0)
      break;
    content.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return content;
}

std::string describeJson(const nlohmann::json &value) {
  std::string text = value.dump();
  constexpr size_t kMax = 60;
  if (text.size() > kMax)
    text = text.substr(0, kMax - 3) + "...";
  return text;
}

} // namespace kiln::frontend::detail
