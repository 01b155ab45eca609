//===- RunSupport.h - opening artifacts and sessions ------------*- C++ -*-===//
#ifndef KILN_TOOLS_KILN_RUNSUPPORT_H
#define KILN_TOOLS_KILN_RUNSUPPORT_H

#include "kiln/Runtime.h"

#include "CLI/CLI.hpp"

#include <memory>
#include <string>

namespace kiln::tools {

/// Model::open with a progress line on a terminal; `weightsDir` (if not
/// empty) overrides an external-weights artifact's checkpoint directory.
absl::StatusOr<std::unique_ptr<Model>>
openModel(const std::string &path, bool verifyWeights,
          const std::string &weightsDir = "");

/// `--device auto|cpu|cuda` into `device`.
void addDeviceOption(CLI::App &app, Device &device);

/// Creates the session and says on stderr where it runs when that is not
/// simply the CPU (a GPU, or the CPU and why the artifact's GPU code is not
/// used).
absl::StatusOr<std::unique_ptr<Session>>
createSession(const Model &model, const SessionOptions &options);

} // namespace kiln::tools

#endif // KILN_TOOLS_KILN_RUNSUPPORT_H
