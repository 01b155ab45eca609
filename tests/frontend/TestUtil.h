// Shared helpers for the frontend tests.
#ifndef KILN_TESTS_FRONTEND_TESTUTIL_H
#define KILN_TESTS_FRONTEND_TESTUTIL_H

#include "absl/status/statusor.h"
#include "gtest/gtest.h"

#include <filesystem>
#include <string>
#include <unistd.h>

namespace kiln::frontend::testing {

/// An empty directory private to the running test, so tests never see each
/// other's files (ctest runs them in parallel processes).
inline std::filesystem::path freshTempDir() {
  const ::testing::TestInfo *info =
      ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string("kiln-frontend-") + info->test_suite_name() +
                     "-" + info->name() + "-" + std::to_string(::getpid());
  for (char &c : name)
    if (c == '/')
      c = '_';
  std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

/// The error message, or "<ok>" so that a substring matcher on it fails.
inline std::string errorOf(const absl::Status &status) {
  return status.ok() ? "<ok>" : std::string(status.message());
}
template <typename T> std::string errorOf(const absl::StatusOr<T> &result) {
  return errorOf(result.status());
}

} // namespace kiln::frontend::testing

#endif // KILN_TESTS_FRONTEND_TESTUTIL_H
