//===- Commands.h - kiln subcommands ----------------------------*- C++ -*-===//
//
// Each subcommand registers its options on the CLI11 app and returns the
// function that runs it once the command line is parsed.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_TOOLS_KILN_COMMANDS_H
#define KILN_TOOLS_KILN_COMMANDS_H

#include "absl/status/status.h"

#include <CLI/CLI.hpp>

#include <functional>
#include <map>
#include <string>

namespace kiln::tools {

using CommandRunner = std::function<absl::Status()>;

/// Runs the parsed subcommand's runner; prints "<tool> <sub>: error: ..."
/// and returns 1 when it fails (RunSupport.cpp).
int runParsedCommand(const std::map<CLI::App *, CommandRunner> &runners,
                     const std::string &tool);

CommandRunner registerCompileModel(CLI::App &app);
CommandRunner registerInitModel(CLI::App &app);
CommandRunner registerRun(CLI::App &app);
CommandRunner registerGenerate(CLI::App &app);
CommandRunner registerInspect(CLI::App &app);
CommandRunner registerVerify(CLI::App &app);
CommandRunner registerBench(CLI::App &app);

/// `kiln inspect` on a model directory or config.json (InspectModel.cpp).
struct QuantizeFlags;
absl::Status inspectModel(const std::string &path, const std::string &mla,
                          const std::string &activationDtype,
                          const QuantizeFlags &quantize);

} // namespace kiln::tools

#endif // KILN_TOOLS_KILN_COMMANDS_H
