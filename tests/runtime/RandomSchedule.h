// Continuous batching under a random schedule, shared by the CPU and
// emulated-GPU test (tests/e2e/ContinuousBatchingTest.cpp) and the real-GPU
// one (tests/runtime/GpuExecutorTest.cpp). Runtime-only (no MLIR).
//
// Sequences start (prompts of 1 to 40 random tokens, prefilled beside the
// ones alive, in the artifact's chunks), decode in random subsets and
// orders with random tokens, and end at random steps, at the context
// bound, or when the cache is full (the shortest first, as a server
// preempts its newest request); their cache blocks pass to the sequences
// after them. Every sequence's logits after its prefill and after each of
// its decode steps are kept, to be compared with the same tokens run alone
// in a fresh session: the session's simplest use, independent of the
// schedule.
#ifndef KILN_TESTS_RUNTIME_RANDOMSCHEDULE_H
#define KILN_TESTS_RUNTIME_RANDOMSCHEDULE_H

#include "kiln/Runtime.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace kiln::testing {

/// What one sequence was given and what it returned: its prompt, the token
/// of each decode step, the logits after its prefill and each step, and
/// (sessions with prompt logits) those of the prompt positions its
/// prefill's last chunk held.
struct SequenceTrace {
  std::vector<int32_t> prompt;
  std::vector<int32_t> fed;
  std::vector<std::vector<float>> logits;
  std::map<size_t, std::vector<float>> promptLogits;
};

/// A schedule's sequences, and what it made the session do.
struct ScheduleRun {
  std::vector<SequenceTrace> sequences;
  /// Prefills and decode steps the session refused for want of cache (and
  /// left undone, as it must).
  int refusedPrefills = 0, refusedDecodes = 0;
  /// Decode steps run, per batch size.
  std::map<size_t, int> decodeBatches;
  /// The most tokens a sequence held.
  size_t longest = 0;
  /// Prompt positions whose logits the sequences kept.
  size_t promptRows = 0;
};

/// Runs `iterations` steps of the random schedule (seeded by `seed`) on
/// `s`, a session of a model with `vocab` tokens whose plan takes
/// `maxBatch` sequences of `maxContext` tokens. Every sequence is ended
/// (released) by the time it returns.
inline ScheduleRun runRandomSchedule(Session &s, int32_t vocab, size_t maxBatch,
                                     size_t maxContext, uint32_t seed,
                                     int iterations) {
  ScheduleRun run;
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  auto chance = [&](double p) { return std::bernoulli_distribution(p)(rng); };
  auto logitsOf = [&](int id) {
    std::span<const float> row = s.logits(id);
    return std::vector<float>(row.begin(), row.end());
  };
  std::map<int, SequenceTrace> live;
  auto end = [&](int id) {
    EXPECT_TRUE(s.release(id).ok());
    SequenceTrace &trace = live.at(id);
    run.longest = std::max(run.longest, trace.prompt.size() + trace.fed.size());
    run.sequences.push_back(std::move(trace));
    live.erase(id);
  };
  for (int iteration = 0; iteration < iterations; ++iteration) {
    SCOPED_TRACE("schedule step " + std::to_string(iteration));
    if (live.size() < maxBatch && (live.empty() || chance(0.3))) {
      std::vector<std::vector<int32_t>> prompts(
          std::min<size_t>(uniform(1, 2), maxBatch - live.size()));
      for (std::vector<int32_t> &prompt : prompts) {
        prompt.resize(static_cast<size_t>(uniform(1, 40)));
        for (int32_t &token : prompt)
          token = uniform(0, vocab - 1);
      }
      std::vector<int> before = s.sequences();
      absl::StatusOr<std::vector<int>> ids = s.prefill(prompts);
      if (ids.ok()) {
        for (size_t i = 0; i < ids->size(); ++i) {
          SequenceTrace &trace = live[(*ids)[i]];
          trace = {prompts[i], {}, {logitsOf((*ids)[i])}, {}};
          // The positions of the last chunk (of the group's longest prompt)
          // that the prompt reaches; none without prompt logits.
          for (size_t p = 0; p < prompts[i].size(); ++p)
            if (absl::StatusOr<std::span<const float>> row =
                    s.promptLogits((*ids)[i], p);
                row.ok()) {
              trace.promptLogits[p].assign(row->begin(), row->end());
              ++run.promptRows;
            }
        }
      } else {
        // A full cache starts nothing.
        EXPECT_EQ(ids.status().code(), absl::StatusCode::kResourceExhausted)
            << ids.status().message();
        EXPECT_EQ(s.sequences(), before);
        ++run.refusedPrefills;
      }
    }
    if (live.empty())
      continue;
    // A random subset of the live sequences, in a random order.
    std::vector<int> ids;
    for (const auto &[id, trace] : live)
      ids.push_back(id);
    std::shuffle(ids.begin(), ids.end(), rng);
    ids.resize(static_cast<size_t>(uniform(1, static_cast<int>(ids.size()))));
    std::vector<int32_t> tokens;
    for (size_t i = 0; i < ids.size(); ++i)
      tokens.push_back(uniform(0, vocab - 1));
    absl::Status decoded = s.decode(ids, tokens);
    if (!decoded.ok()) {
      // Nothing done: the shortest sequence ends to make room.
      EXPECT_EQ(decoded.code(), absl::StatusCode::kResourceExhausted)
          << decoded.message();
      if (decoded.code() != absl::StatusCode::kResourceExhausted)
        break;
      ++run.refusedDecodes;
      int shortest = live.begin()->first;
      for (const auto &[id, trace] : live)
        if (s.length(id) < s.length(shortest))
          shortest = id;
      end(shortest);
      continue;
    }
    ++run.decodeBatches[ids.size()];
    for (size_t i = 0; i < ids.size(); ++i) {
      SequenceTrace &trace = live.at(ids[i]);
      trace.fed.push_back(tokens[i]);
      trace.logits.push_back(logitsOf(ids[i]));
      EXPECT_EQ(s.length(ids[i]), trace.prompt.size() + trace.fed.size());
    }
    for (int id : ids)
      if (s.length(id) == maxContext || chance(0.005))
        end(id);
  }
  while (!live.empty())
    end(live.begin()->first);
  return run;
}

/// Every logit of `row` within `tolerance` times the largest magnitude of
/// `reference`.
inline void expectRowNear(std::span<const float> row,
                          std::span<const float> reference, double tolerance,
                          const std::string &what) {
  ASSERT_EQ(row.size(), reference.size()) << what;
  double diff = 0, scale = 0;
  for (size_t v = 0; v < reference.size(); ++v) {
    diff = std::max(diff, std::fabs(double(row[v]) - reference[v]));
    scale = std::max(scale, std::fabs(double(reference[v])));
  }
  ASSERT_LE(diff, tolerance * scale) << what;
}

/// Each of `sequences` run alone in a fresh session of `model` made with
/// `options` (its prompt, then its tokens one decode step at a time): every
/// logit within `tolerance` times its row's largest magnitude of the one
/// `sequences` kept, prompt logits included (`options` must keep them where
/// the trace has some).
inline void expectSequencesAsAlone(const Model &model,
                                   const SessionOptions &options,
                                   const std::vector<SequenceTrace> &sequences,
                                   double tolerance) {
  for (size_t n = 0; n < sequences.size(); ++n) {
    SCOPED_TRACE("sequence " + std::to_string(n));
    const SequenceTrace &trace = sequences[n];
    absl::StatusOr<std::unique_ptr<Session>> alone =
        Session::create(model, options);
    ASSERT_TRUE(alone.ok()) << alone.status().message();
    absl::StatusOr<std::vector<int>> id = (*alone)->prefill({trace.prompt});
    ASSERT_TRUE(id.ok()) << id.status().message();
    // Alone, the last chunk starts no later: it holds these positions too.
    for (const auto &[position, batched] : trace.promptLogits) {
      absl::StatusOr<std::span<const float>> reference =
          (*alone)->promptLogits(id->front(), position);
      ASSERT_TRUE(reference.ok()) << reference.status().message();
      expectRowNear(batched, *reference, tolerance,
                    "prompt position " + std::to_string(position));
      if (::testing::Test::HasFatalFailure())
        return;
    }
    for (size_t step = 0; step < trace.logits.size(); ++step) {
      if (step > 0) {
        absl::Status st = (*alone)->decode(
            *id, std::span<const int32_t>(&trace.fed[step - 1], 1));
        ASSERT_TRUE(st.ok()) << st.message();
      }
      expectRowNear(trace.logits[step], (*alone)->logits(id->front()),
                    tolerance, "step " + std::to_string(step));
      if (::testing::Test::HasFatalFailure())
        return;
    }
  }
}

} // namespace kiln::testing

#endif // KILN_TESTS_RUNTIME_RANDOMSCHEDULE_H
