// Helpers shared by the frontend's sources. Internal: not installed and
// not part of the library's interface.
#ifndef KILN_FRONTEND_SUPPORT_H
#define KILN_FRONTEND_SUPPORT_H

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <string_view>
#include <type_traits>

namespace kiln::frontend::detail {

/// Debian's Abseil is built with its own string_view, which does not convert
/// from std::string_view; the frontend's interface uses the standard one.
inline absl::string_view asAbsl(std::string_view s) {
  return {s.data(), s.size()};
}

template <typename T> decltype(auto) asStrCatArg(const T &value) {
  if constexpr (std::is_same_v<T, std::string_view>)
    return asAbsl(value);
  else
    return (value);
}

/// absl::StrCat that also takes std::string_view.
template <typename... Args> std::string strCat(const Args &...args) {
  return absl::StrCat(asStrCatArg(args)...);
}

/// absl::StrAppend that also takes std::string_view.
template <typename... Args>
void strAppend(std::string *out, const Args &...args) {
  absl::StrAppend(out, asStrCatArg(args)...);
}

/// A JSON value as it appears in the file, shortened for messages.
std::string describeJson(const nlohmann::json &value);

/// The whole content of `path`; errors name the path and the system error.
absl::StatusOr<std::string> readFile(const std::filesystem::path &path);

} // namespace kiln::frontend::detail

#endif // KILN_FRONTEND_SUPPORT_H
