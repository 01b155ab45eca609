// What the device executors are compared on against the CPU executor
// (tests/e2e/EmulatedGpuTest.cpp on the host, tests/runtime/GpuExecutorTest.cpp
// on a GPU): every step's logits of a ragged batch, prefilled in chunks where
// the artifact's prefill bound is below the longest prompt, then greedy
// decode steps on the whole batch. The device follows the reference's
// greedy tokens, so that a near-tie its rounding breaks the other way does
// not send the two down different sequences (expectSameSteps still checks
// its own argmax wherever the reference's is clear).
#ifndef KILN_TESTS_RUNTIME_DEVICESTEPS_H
#define KILN_TESTS_RUNTIME_DEVICESTEPS_H

#include "kiln/Runtime.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace kiln::testing {

/// The prompts of runDeviceSteps: a 22-token prompt (prefilled in chunks
/// where the artifact's bound is lower), a short one and a single token.
inline std::vector<std::vector<int32_t>> raggedPrompts() {
  return {{5,  17, 3,  99, 42, 7,  8,  1,  2,  64, 31,
           12, 9,  10, 11, 13, 14, 15, 16, 18, 19, 20},
          {7, 7, 100},
          {1}};
}

/// `count` three-token prompts, for decode steps of `count` rows (16+:
/// cuBLASLt's GEMMs inside the decode graph, as in a serving batch).
inline std::vector<std::vector<int32_t>> widePrompts(int32_t count) {
  std::vector<std::vector<int32_t>> prompts;
  for (int32_t i = 0; i < count; ++i)
    prompts.push_back({1 + i, 7, 3 + 2 * i});
  return prompts;
}

/// Every step's logits; the tokens decoded are the argmax of `reference`'s
/// logits of the same row where given, of the device's own otherwise. The
/// CPU's prefills compute every prompt position's logits (the head
/// GoldenTest checks against HF at every position), a GPU's (real or
/// emulated) each sequence's last alone, as generation runs it: the two
/// forms of the output head meet in each comparison.
inline std::vector<std::vector<float>> runDeviceSteps(
    const Model &model, Device device, std::string &where,
    const std::vector<std::vector<float>> *reference = nullptr,
    const std::vector<std::vector<int32_t>> &prompts = raggedPrompts()) {
  SessionOptions options;
  options.device = device;
  options.promptLogits = device == Device::Cpu;
  absl::StatusOr<std::unique_ptr<Session>> session =
      Session::create(model, options);
  EXPECT_TRUE(session.ok()) << session.status().message();
  if (!session.ok())
    return {};
  Session &s = **session;
  where = s.device();
  absl::StatusOr<std::vector<int>> ids = s.prefill(prompts);
  EXPECT_TRUE(ids.ok()) << ids.status().message();
  if (!ids.ok())
    return {};
  std::vector<std::vector<float>> steps;
  for (int step = 0; step < 6; ++step) {
    std::vector<int32_t> next;
    for (int id : *ids) {
      std::span<const float> logits = s.logits(id);
      steps.emplace_back(logits.begin(), logits.end());
      const std::vector<float> &chooser =
          reference && reference->size() >= steps.size()
              ? (*reference)[steps.size() - 1]
              : steps.back();
      next.push_back(static_cast<int32_t>(
          std::max_element(chooser.begin(), chooser.end()) - chooser.begin()));
    }
    absl::Status decoded = s.decode(*ids, next);
    EXPECT_TRUE(decoded.ok()) << decoded.message();
    if (!decoded.ok())
      break;
  }
  return steps;
}

/// Each logit within `tolerance` times its row's largest magnitude, and the
/// same argmax wherever the reference's top-2 margin exceeds twice the
/// row's largest difference (a smaller margin is a tie the difference may
/// flip).
inline void expectSameSteps(const std::vector<std::vector<float>> &reference,
                            const std::vector<std::vector<float>> &device,
                            float tolerance) {
  ASSERT_EQ(reference.size(), device.size());
  ASSERT_FALSE(reference.empty());
  for (size_t i = 0; i < reference.size(); ++i) {
    const std::vector<float> &r = reference[i], &d = device[i];
    ASSERT_EQ(r.size(), d.size());
    float scale = 0, worst = 0;
    for (size_t j = 0; j < r.size(); ++j) {
      scale = std::max(scale, std::fabs(r[j]));
      worst = std::max(worst, std::fabs(r[j] - d[j]));
    }
    for (size_t j = 0; j < r.size(); ++j)
      ASSERT_NEAR(d[j], r[j], tolerance * scale)
          << "step row " << i << ", logit " << j;
    std::vector<float> sorted = r;
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(),
                      std::greater<>());
    if (sorted[0] - sorted[1] > 2 * worst) {
      EXPECT_EQ(std::max_element(d.begin(), d.end()) - d.begin(),
                std::max_element(r.begin(), r.end()) - r.begin())
          << "step row " << i;
    }
  }
}

} // namespace kiln::testing

#endif // KILN_TESTS_RUNTIME_DEVICESTEPS_H
