//===- main.cpp - the kiln command-line tool ------------------------------===//
#include "tools/kiln/Commands.h"

#include <iostream>
#include <map>

int main(int argc, char **argv) {
  CLI::App app{"Kiln: a compiler and runtime for DeepSeek-style models"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every subcommand");

  std::map<CLI::App *, kiln::tools::CommandRunner> runners;
  auto add = [&](const char *name, const char *description, auto registerFn) {
    CLI::App *sub = app.add_subcommand(name, description);
    runners[sub] = registerFn(*sub);
  };
  add("compile-model", "Compile a Hugging Face model directory or config.json",
      kiln::tools::registerCompileModel);
  add("init-model",
      "Write a Hugging Face-style model directory with seeded random weights",
      kiln::tools::registerInitModel);
  add("run", "Run a prompt through an artifact and generate tokens",
      kiln::tools::registerRun);
  add("generate", "Generate from several prompts as one batch",
      kiln::tools::registerGenerate);
  add("inspect", "Describe an artifact: entry points, sizes, launches",
      kiln::tools::registerInspect);
  add("verify", "Check an artifact's integrity (format, plan, checksums)",
      kiln::tools::registerVerify);
  add("bench", "Measure prefill and decode throughput of an artifact (JSON)",
      kiln::tools::registerBench);

  CLI11_PARSE(app, argc, argv);
  return kiln::tools::runParsedCommand(runners, "kiln");
}
