//===- RunSupport.cpp - opening artifacts and sessions --------------------===//
#include "tools/kiln/RunSupport.h"

#include "tools/kiln/Commands.h"
#include "tools/kiln/Progress.h"

#include <iostream>
#include <map>

namespace kiln::tools {

absl::StatusOr<std::unique_ptr<Model>>
openModel(const std::string &path, bool verifyWeights,
          const std::string &weightsDir) {
  Progress progress;
  progress.begin("load " + path);
  LoadOptions options;
  options.verifyWeights = verifyWeights;
  options.weightsDir = weightsDir;
  absl::StatusOr<std::unique_ptr<Model>> model = Model::open(path, options);
  if (!model.ok())
    return model;
  progress.end();
  return model;
}

void addDeviceOption(CLI::App &app, Device &device) {
  std::map<std::string, Device> names{{"auto", Device::Auto},
                                      {"cpu", Device::Cpu},
                                      {"cuda", Device::Cuda},
                                      {"emulated", Device::Emulated}};
  app.add_option("--device", device,
                 "auto: the GPU when the artifact has code for it, else the "
                 "CPU; cpu; cuda (library kernels where the artifact has no "
                 "GPU code); emulated (the GPU plan on the host, for "
                 "testing)")
      ->transform(CLI::CheckedTransformer(names, CLI::ignore_case));
}

absl::StatusOr<std::unique_ptr<Session>>
createSession(const Model &model, const SessionOptions &options) {
  absl::StatusOr<std::unique_ptr<Session>> session =
      Session::create(model, options);
  if (session.ok() && (*session)->device() != "cpu")
    std::cerr << "kiln: running on " << (*session)->device() << "\n";
  return session;
}

int runParsedCommand(const std::map<CLI::App *, CommandRunner> &runners,
                     const std::string &tool) {
  for (const auto &[sub, run] : runners) {
    if (!sub->parsed())
      continue;
    if (absl::Status status = run(); !status.ok()) {
      std::cerr << tool << " " << sub->get_name()
                << ": error: " << status.message() << "\n";
      return 1;
    }
  }
  return 0;
}

} // namespace kiln::tools
