#include "kiln/Sampler.h"

#include <algorithm>
#include <cmath>

namespace kiln {

Sampler::Sampler(SamplingParams params)
    : params_(params), engine_(params.seed) {}

double Sampler::uniform() {
  return static_cast<double>(engine_() >> 11) * 0x1p-53;
}

int32_t Sampler::sample(const float *logits, int64_t vocab) {
  if (vocab <= 0)
    return 0;
  // Argmax, lowest index on ties; NaN never wins.
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best] ||
        (std::isnan(logits[best]) && !std::isnan(logits[i])))
      best = i;
  if (!(params_.temperature > 0.0f) || params_.topK == 1)
    return static_cast<int32_t>(best);

  // Candidates by decreasing logit (lower index first on ties); only as many
  // as the filters can keep are ordered.
  candidates_.clear();
  for (int64_t i = 0; i < vocab; ++i)
    if (!std::isnan(logits[i]))
      candidates_.emplace_back(logits[i], static_cast<int32_t>(i));
  if (candidates_.empty())
    return static_cast<int32_t>(best);
  auto before = [](const std::pair<float, int32_t> &a,
                   const std::pair<float, int32_t> &b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = candidates_.size();
  if (params_.topK > 0)
    keep = std::min(keep, static_cast<size_t>(params_.topK));
  bool nucleus = params_.topP < 1.0f;
  if (keep < candidates_.size()) {
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep,
                      candidates_.end(), before);
    candidates_.resize(keep);
  } else if (nucleus) {
    std::sort(candidates_.begin(), candidates_.end(), before);
  }

  // Softmax of logits / T over the kept candidates, in double.
  double top = candidates_[0].first;
  if (!nucleus && params_.topK <= 0)
    for (const auto &c : candidates_)
      top = std::max(top, static_cast<double>(c.first));
  double invT = 1.0 / static_cast<double>(params_.temperature);
  probs_.resize(candidates_.size());
  double total = 0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    probs_[i] =
        std::exp((static_cast<double>(candidates_[i].first) - top) * invT);
    total += probs_[i];
  }
  if (nucleus) {
    // The smallest prefix whose probability reaches top_p.
    double target = static_cast<double>(params_.topP) * total, cumulative = 0;
    size_t n = 0;
    while (n < probs_.size()) {
      cumulative += probs_[n++];
      if (cumulative >= target)
        break;
    }
    probs_.resize(n);
    total = cumulative;
  }
  double u = uniform() * total, cumulative = 0;
  for (size_t i = 0; i < probs_.size(); ++i) {
    cumulative += probs_[i];
    if (u < cumulative)
      return candidates_[i].second;
  }
  return candidates_[probs_.size() - 1].second;
}

} // namespace kiln
