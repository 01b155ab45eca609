//===- main.cpp - kiln-run: the runtime-only command-line tool ------------===//
//
// `kiln run / generate / verify / bench` without the compiler, for machines
// that have no MLIR (GPU hosts run artifacts compiled elsewhere).
//
//===----------------------------------------------------------------------===//
#include "tools/kiln/Commands.h"

#include <iostream>
#include <map>

int main(int argc, char **argv) {
  CLI::App app{"kiln-run: run Kiln artifacts (the runtime-only kiln)"};
  app.require_subcommand(1);
  std::map<CLI::App *, kiln::tools::CommandRunner> runners;
  auto add = [&](const char *name, const char *description, auto registerFn) {
    CLI::App *sub = app.add_subcommand(name, description);
    runners[sub] = registerFn(*sub);
  };
  add("run", "Run a prompt through an artifact and generate tokens",
      kiln::tools::registerRun);
  add("generate", "Generate from several prompts as one batch",
      kiln::tools::registerGenerate);
  add("verify", "Check an artifact's integrity (format, plan, checksums)",
      kiln::tools::registerVerify);
  add("bench", "Measure prefill and decode throughput of an artifact (JSON)",
      kiln::tools::registerBench);
  CLI11_PARSE(app, argc, argv);
  return kiln::tools::runParsedCommand(runners, "kiln-run");
}
