// Shared helpers for the frontend tests.
#ifndef KILN_TESTS_FRONTEND_TESTUTIL_H
#define KILN_TESTS_FRONTEND_TESTUTIL_H

#include "absl/status/statusor.h"
#include "gtest/gtest.h"

#include <filesystem>
#include <string>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace kiln::frontend::testing {

/// The directories freshTempDir made, removed when the test program ends
/// (a ctest run is a process per test), so that runs leave nothing behind.
class TempDirCleanup : public ::testing::Environment {
public:
  static std::vector<std::filesystem::path> &made() {
    static std::vector<std::filesystem::path> dirs;
    return dirs;
  }
  void TearDown() override {
    for (const std::filesystem::path &dir : made()) {
      std::error_code ignored; // a test may have removed it itself
      std::filesystem::remove_all(dir, ignored);
    }
    made().clear();
  }
};
// Registered before main, as gtest asks of environments.
inline ::testing::Environment *const kTempDirCleanup =
    ::testing::AddGlobalTestEnvironment(new TempDirCleanup);

/// An empty directory private to the running test, so tests never see each
/// other's files (ctest runs them in parallel processes); removed when the
/// test program ends.
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
  TempDirCleanup::made().push_back(dir);
  return dir;
}

/// A directory private to this run of the test program, for files its
/// tests share (an artifact compiled once); removed when the program ends.
inline std::filesystem::path programTempDir() {
  static const std::filesystem::path dir = [] {
    std::filesystem::path made =
        std::filesystem::path(::testing::TempDir()) /
        ("kiln-tests-" + std::to_string(::getpid()));
    std::filesystem::remove_all(made);
    std::filesystem::create_directories(made);
    TempDirCleanup::made().push_back(made);
    return made;
  }();
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
