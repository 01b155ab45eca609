//===- Bench.cpp - kiln bench ---------------------------------------------===//
//
// Prefill and decode throughput of an artifact at given batch sizes and
// context lengths, printed as JSON. Each point prefills `batch` prompts of
// `context` tokens, then times `steps` decode steps. With --profile each
// point runs once more with the session's kernel profile on, and reports
// where the prefill's and a decode step's time goes, kernel by kernel.
//
//===----------------------------------------------------------------------===//
#include "tools/kiln/Commands.h"
#include "tools/kiln/RunSupport.h"

#include "kiln/Runtime.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <omp.h>
#include <random>
#include <sstream>
#include <string_view>

namespace kiln::tools {
namespace {

struct BenchOptions {
  std::string artifact;
  std::vector<int> batches{1, 8};
  std::vector<int> contexts{128};
  int steps = 32;
  int repeats = 3;
  bool syntheticContext = false;
  bool profile = false;
  bool promptLogits = false;
  Device device = Device::Auto;
  std::string weightsDir;
};

double seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

/// `text` as the contents of a JSON string.
std::string jsonEscaped(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\')
      out += '\\';
    if (static_cast<unsigned char>(c) < 0x20)
      out += ' '; // a message's line breaks: one line in the JSON
    else
      out += c;
  }
  return out;
}

/// A kernel profile as a JSON object: the time, and each kernel's launches,
/// time and (where known) weight bytes read, per `runs` (a decode
/// profile's steps).
std::string profileJson(const std::vector<KernelTime> &times, int runs) {
  double total = 0;
  for (const KernelTime &t : times)
    total += t.seconds;
  std::ostringstream json;
  json << "{\"ms\": " << 1e3 * total / runs << ", \"kernels\": [";
  for (size_t i = 0; i < times.size(); ++i) {
    const KernelTime &t = times[i];
    json << (i ? ", " : "") << "{\"kernel\": \"" << jsonEscaped(t.kernel)
         << "\", \"launches\": " << static_cast<double>(t.launches) / runs
         << ", \"ms\": " << 1e3 * t.seconds / runs;
    if (t.weightBytes >= 0)
      json << ", \"weight_bytes\": "
           << static_cast<double>(t.weightBytes) / runs;
    json << "}";
  }
  json << "]}";
  return json.str();
}

/// The point's prefill and `steps` decode steps once more, profiled: JSON
/// members for the point's object.
absl::StatusOr<std::string>
profiledRun(Session &s, const std::vector<std::vector<int32_t>> &prompts,
            int context, const BenchOptions &opts, std::mt19937 &rng,
            std::uniform_int_distribution<int32_t> &token) {
  for (int id : s.sequences())
    if (absl::Status st = s.release(id); !st.ok())
      return st;
  s.setKernelProfiling(true);
  s.resetKernelProfile();
  std::string json;
  absl::StatusOr<std::vector<int>> ids = s.prefill(prompts);
  if (!ids.ok())
    return ids.status();
  if (!opts.syntheticContext)
    json +=
        ", \"prefill_kernel_profile\": " + profileJson(s.kernelProfile(), 1);
  else
    for (int id : *ids)
      if (absl::Status st = s.extendUncomputed(id, context - 1); !st.ok())
        return st;
  s.resetKernelProfile();
  std::vector<int32_t> next(ids->size());
  for (int step = 0; step < opts.steps; ++step) {
    for (int32_t &t : next)
      t = token(rng);
    if (absl::Status st = s.decode(*ids, next); !st.ok())
      return st;
  }
  json += ", \"decode_kernel_profile\": " +
          profileJson(s.kernelProfile(), opts.steps);
  return json;
}

absl::Status bench(const BenchOptions &opts) {
  absl::StatusOr<std::unique_ptr<Model>> model =
      openModel(opts.artifact, /*verifyWeights=*/true, opts.weightsDir);
  if (!model.ok())
    return model.status();
  const ModelInfo &info = (*model)->info();
  // A KV cache just big enough for the largest point.
  SessionOptions sessionOptions;
  int maxBatch = *std::max_element(opts.batches.begin(), opts.batches.end());
  int maxContext =
      *std::max_element(opts.contexts.begin(), opts.contexts.end());
  sessionOptions.kvBlocks =
      int64_t{maxBatch} * ((maxContext + opts.steps + 63) / 64 + 1);
  sessionOptions.device = opts.device;
  // A prefill computes each sequence's last logits, as generation does
  // (HF's generate: logits_to_keep=1); --prompt-logits every position's, as
  // scoring does.
  sessionOptions.promptLogits = opts.promptLogits;
  // The steps feed random tokens: their logits are never read, and stay on
  // the device (HF's timed loops keep theirs on the GPU).
  sessionOptions.stepLogits = false;
  absl::StatusOr<std::unique_ptr<Session>> session =
      createSession(**model, sessionOptions);
  if (!session.ok())
    return session.status();
  Session &s = **session;
  std::mt19937 rng(0);
  std::uniform_int_distribution<int32_t> token(
      0, static_cast<int32_t>(info.vocabSize - 1));

  std::ostringstream json;
  json << "{\n  \"artifact\": \"" << jsonEscaped(info.path)
       << "\",\n  \"architecture\": \"" << info.architecture
       << "\",\n  \"device\": \"" << s.device()
       << "\",\n  \"threads\": " << omp_get_max_threads()
       << ",\n  \"prompt_logits\": " << (opts.promptLogits ? "true" : "false")
       << ",\n  \"decode_steps\": " << opts.steps << ",\n  \"results\": [";
  // Every point is timed before any is profiled: a profile that breaks the
  // device (a GPU fault ends its context) costs no timing.
  struct Point {
    int context;
    std::vector<std::vector<int32_t>> prompts;
    std::string json; // the point's members
  };
  std::vector<Point> points;
  for (int batch : opts.batches)
    for (int context : opts.contexts) {
      if (batch > static_cast<int>(info.maxBatch) ||
          context + opts.steps > static_cast<int>(info.maxContext))
        return absl::InvalidArgumentError(
            "batch " + std::to_string(batch) + " / context " +
            std::to_string(context) + " + " + std::to_string(opts.steps) +
            " steps exceed the artifact's limits (batch " +
            std::to_string(info.maxBatch) + ", context " +
            std::to_string(info.maxContext) + ")");
      // With --synthetic-context the prompt is one token and the context
      // is made of uncomputed positions: decode is timed at long contexts
      // without running a long prefill (whose time is then not reported).
      int promptLength = opts.syntheticContext ? 1 : context;
      std::vector<std::vector<int32_t>> prompts(batch);
      for (auto &p : prompts)
        for (int i = 0; i < promptLength; ++i)
          p.push_back(token(rng));
      std::vector<int32_t> next(batch);
      double bestPrefill = 1e30, bestDecode = 1e30;
      int64_t decodeLaunches = 0;
      for (int r = 0; r < opts.repeats; ++r) {
        auto start = std::chrono::steady_clock::now();
        for (int id : s.sequences())
          if (absl::Status st = s.release(id); !st.ok())
            return st;
        absl::StatusOr<std::vector<int>> ids = s.prefill(prompts);
        if (!ids.ok())
          return ids.status();
        bestPrefill = std::min(bestPrefill, seconds(start));
        if (opts.syntheticContext)
          for (int id : *ids)
            if (absl::Status st = s.extendUncomputed(id, context - 1); !st.ok())
              return st;
        int64_t launches = s.kernelLaunches();
        start = std::chrono::steady_clock::now();
        for (int step = 0; step < opts.steps; ++step) {
          for (int b = 0; b < batch; ++b)
            next[b] = token(rng);
          if (absl::Status st = s.decode(*ids, next); !st.ok())
            return st;
        }
        double decode = seconds(start);
        if (decode < bestDecode) {
          bestDecode = decode;
          decodeLaunches = s.kernelLaunches() - launches;
        }
      }
      std::ostringstream point;
      point << "\"batch\": " << batch << ", \"context\": " << context
            << ", \"prefill_tokens_per_s\": "
            << (opts.syntheticContext
                    ? std::string("null")
                    : std::to_string(batch * context / bestPrefill))
            << ", \"decode_tokens_per_s\": " << batch * opts.steps / bestDecode
            << ", \"decode_step_ms\": " << 1e3 * bestDecode / opts.steps
            << ", \"decode_kernel_launches_per_step\": "
            << static_cast<double>(decodeLaunches) / opts.steps
            << ", \"kv_cache_bytes\": "
            << info.kvCacheBytesPerToken * batch * (context + opts.steps);
      points.push_back({context, std::move(prompts), point.str()});
    }
  if (opts.profile)
    for (Point &p : points) {
      // A failed profile leaves the timings standing.
      absl::StatusOr<std::string> run =
          profiledRun(s, p.prompts, p.context, opts, rng, token);
      s.setKernelProfiling(false);
      p.json += run.ok()
                    ? *run
                    : ", \"kernel_profile_error\": \"" +
                          jsonEscaped(std::string(run.status().message())) +
                          "\"";
    }
  for (size_t i = 0; i < points.size(); ++i)
    json << (i ? "," : "") << "\n    {" << points[i].json << "}";
  json << "\n  ]\n}\n";
  std::cout << json.str();
  return absl::OkStatus();
}

} // namespace

CommandRunner registerBench(CLI::App &app) {
  auto opts = std::make_shared<BenchOptions>();
  app.add_option("artifact", opts->artifact, "A .kiln file")->required();
  app.add_option("--batch", opts->batches, "Batch sizes")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--context", opts->contexts,
                 "Prompt lengths (the context decode steps attend to)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--steps", opts->steps, "Decode steps timed per point")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_flag("--synthetic-context", opts->syntheticContext,
               "Fill the context with uncomputed positions instead of a "
               "prefill (times decode only)");
  app.add_flag("--profile", opts->profile,
               "After each point's timed runs, run it once more with the "
               "kernel profile on and report each kernel's time per prefill "
               "and per decode step");
  app.add_flag("--prompt-logits", opts->promptLogits,
               "Prefills compute every prompt position's logits, as "
               "scoring does (by default each sequence's last, as "
               "generation does)");
  app.add_option("--repeats", opts->repeats, "Best of this many runs")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  addDeviceOption(app, opts->device);
  app.add_option("--weights-dir", opts->weightsDir,
                 "External weights: the checkpoint directory (default: the "
                 "one the artifact was compiled against)");
  return [opts] { return bench(*opts); };
}

} // namespace kiln::tools
