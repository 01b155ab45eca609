//===- RunCommands.cpp - kiln run / generate / verify ---------------------===//
//
// The commands that execute or check a `.kiln` artifact through the runtime
// API alone; they are also the runtime-only tool kiln-run (for machines
// without MLIR, such as GPU hosts).
//
//===----------------------------------------------------------------------===//
#include "tools/kiln/Commands.h"
#include "tools/kiln/RunSupport.h"

#include "frontend/Safetensors.h"
#include "kiln/Runtime.h"
#include "kiln/Sampler.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kiln::tools {
namespace {

struct GenerateOptions {
  std::string artifact;
  std::vector<std::string> prompts; // comma-separated token ids each
  int maxNewTokens = 16;
  std::string dumpLogits;
  bool noVerifyWeights = false;
  std::string weightsDir;
  SamplingParams sampling;
  Device device = Device::Auto;
};

absl::StatusOr<std::vector<int32_t>> parseTokens(const std::string &text) {
  std::vector<int32_t> tokens;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t token;
    if (!absl::SimpleAtoi(part, &token))
      return absl::InvalidArgumentError(
          "not a token id: '" + std::string(part) + "' in '" + text + "'");
    tokens.push_back(token);
  }
  return tokens;
}

/// Prefills the prompts as one batch, then decodes `maxNewTokens` tokens
/// per sequence; prints one line of generated token ids per sequence.
absl::Status generate(const GenerateOptions &opts) {
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string &p : opts.prompts) {
    absl::StatusOr<std::vector<int32_t>> tokens = parseTokens(p);
    if (!tokens.ok())
      return tokens.status();
    prompts.push_back(*std::move(tokens));
  }
  absl::StatusOr<std::unique_ptr<Model>> model =
      openModel(opts.artifact, !opts.noVerifyWeights, opts.weightsDir);
  if (!model.ok())
    return model.status();
  SessionOptions sessionOptions;
  sessionOptions.device = opts.device;
  // Every prompt position's logits only where they are dumped.
  sessionOptions.promptLogits = !opts.dumpLogits.empty();
  absl::StatusOr<std::unique_ptr<Session>> session =
      createSession(**model, sessionOptions);
  if (!session.ok())
    return session.status();
  Session &s = **session;
  // Every sequence's prompt rows, chunk by chunk (the session holds only the
  // last prefill chunk's), by sequence id.
  std::map<int, std::vector<float>> promptRows;
  Session::PromptLogitsVisitor keep;
  if (!opts.dumpLogits.empty())
    keep = [&](int sequence, size_t, std::span<const float> row) {
      std::vector<float> &rows = promptRows[sequence];
      rows.insert(rows.end(), row.begin(), row.end());
    };
  absl::StatusOr<std::vector<int>> ids = s.prefill(prompts, keep);
  if (!ids.ok())
    return ids.status();

  int64_t vocab = (*model)->info().vocabSize;
  Sampler sampler(opts.sampling);
  std::vector<std::vector<int32_t>> generated(prompts.size());
  std::vector<std::vector<float>> stepRows(prompts.size());
  for (int step = 0; step < opts.maxNewTokens; ++step) {
    std::vector<int32_t> next;
    for (size_t i = 0; i < ids->size(); ++i) {
      std::span<const float> logits = s.logits((*ids)[i]);
      if (!opts.dumpLogits.empty())
        stepRows[i].insert(stepRows[i].end(), logits.begin(), logits.end());
      next.push_back(sampler.sample(logits.data(), vocab));
      generated[i].push_back(next.back());
    }
    if (step + 1 < opts.maxNewTokens)
      if (absl::Status st = s.decode(*ids, next); !st.ok())
        return st;
  }
  for (const std::vector<int32_t> &tokens : generated) {
    for (size_t i = 0; i < tokens.size(); ++i)
      std::cout << (i ? "," : "") << tokens[i];
    std::cout << "\n";
  }
  if (opts.dumpLogits.empty())
    return absl::OkStatus();
  // Each sequence's logits: every prompt position, then each sampled step;
  // the first sequence's names bare, the i-th's ending in ".i".
  std::vector<frontend::TensorToWrite> tensors;
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::string suffix = i ? "." + std::to_string(i) : "";
    const std::vector<float> &prompt = promptRows[(*ids)[i]];
    tensors.push_back({"prompt.logits" + suffix,
                       frontend::DType::F32,
                       {static_cast<int64_t>(prompt.size()) / vocab, vocab},
                       std::as_bytes(std::span(prompt))});
    tensors.push_back({"tokens" + suffix,
                       frontend::DType::I32,
                       {static_cast<int64_t>(generated[i].size())},
                       std::as_bytes(std::span(generated[i]))});
    if (stepRows[i].empty())
      continue;
    tensors.push_back(
        {"generate.logits" + suffix,
         frontend::DType::F32,
         {static_cast<int64_t>(stepRows[i].size()) / vocab, vocab},
         std::as_bytes(std::span(stepRows[i]))});
  }
  return frontend::writeSafetensors(opts.dumpLogits, tensors);
}

void addSamplingOptions(CLI::App &app, GenerateOptions &opts) {
  app.add_option("--max-new-tokens", opts.maxNewTokens,
                 "Tokens to generate per sequence")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--temperature", opts.sampling.temperature,
                 "Sampling temperature; 0 is greedy")
      ->check(CLI::Range(0.0f, 100.0f))
      ->capture_default_str();
  app.add_option("--top-k", opts.sampling.topK, "Keep the k likeliest; 0: all")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  app.add_option("--top-p", opts.sampling.topP, "Nucleus probability")
      ->check(CLI::Range(0.0f, 1.0f))
      ->capture_default_str();
  app.add_option("--seed", opts.sampling.seed, "Sampling seed")
      ->capture_default_str();
  app.add_option("--weights-dir", opts.weightsDir,
                 "External weights: the checkpoint directory (default: the "
                 "one the artifact was compiled against)");
  app.add_flag("--no-verify-weights", opts.noVerifyWeights,
               "Skip the weights checksum at load (huge models)");
}

} // namespace

CommandRunner registerRun(CLI::App &app) {
  auto opts = std::make_shared<GenerateOptions>();
  auto tokens = std::make_shared<std::string>();
  app.add_option("artifact", opts->artifact, "A .kiln file")->required();
  app.add_option("--tokens", *tokens, "Prompt token ids, comma-separated")
      ->required();
  app.add_option("--dump-logits", opts->dumpLogits,
                 "Write the prompt's and each step's logits (safetensors)");
  addSamplingOptions(app, *opts);
  addDeviceOption(app, opts->device);
  return [opts, tokens] {
    opts->prompts = {*tokens};
    return generate(*opts);
  };
}

CommandRunner registerGenerate(CLI::App &app) {
  auto opts = std::make_shared<GenerateOptions>();
  app.add_option("artifact", opts->artifact, "A .kiln file")->required();
  app.add_option("--prompt", opts->prompts,
                 "A prompt's token ids, comma-separated (repeat for a batch)")
      ->required();
  app.add_option("--dump-logits", opts->dumpLogits,
                 "Write each prompt's and each step's logits (safetensors; "
                 "the i-th sequence's names end in .i, the first's bare)");
  addSamplingOptions(app, *opts);
  addDeviceOption(app, opts->device);
  return [opts] { return generate(*opts); };
}

CommandRunner registerVerify(CLI::App &app) {
  auto path = std::make_shared<std::string>();
  app.add_option("artifact", *path, "A .kiln file")->required();
  return [path]() -> absl::Status {
    absl::StatusOr<std::unique_ptr<Model>> model = openModel(*path, true);
    if (!model.ok())
      return model.status();
    std::cout << *path << ": ok\n";
    return absl::OkStatus();
  };
}

} // namespace kiln::tools
