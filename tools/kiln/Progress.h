//===- Progress.h - progress lines for slow steps ---------------*- C++ -*-===//
//
// Prints "kiln: <step>..." when a step starts and its duration when it ends,
// on a terminal only (so scripted output stays clean).
//
//===----------------------------------------------------------------------===//
#ifndef KILN_TOOLS_KILN_PROGRESS_H
#define KILN_TOOLS_KILN_PROGRESS_H

#include <chrono>
#include <cstdio>
#include <string>
#include <unistd.h>

namespace kiln::tools {

class Progress {
public:
  Progress() : enabled_(::isatty(STDERR_FILENO)) {}

  void begin(const std::string &step) {
    start_ = std::chrono::steady_clock::now();
    if (enabled_)
      std::fprintf(stderr, "kiln: %s...", step.c_str());
  }

  void end() {
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_)
            .count();
    if (enabled_)
      std::fprintf(stderr, " %.2f s\n", seconds);
  }

private:
  bool enabled_;
  std::chrono::steady_clock::time_point start_;
};

} // namespace kiln::tools

#endif // KILN_TOOLS_KILN_PROGRESS_H
