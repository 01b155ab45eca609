// DeepSeekMoE routing: the router (HF's DeepseekV2TopkRouter and
// DeepseekV3TopkRouter), dispatch of token rows to experts and the weighted
// combination of the experts' outputs.
//
// Top-k ties: torch.topk leaves the order of equal values unspecified; here
// the lower index (expert or group) wins. Selected experts are written in
// decreasing order of their selection score (HF uses sorted=False, so any
// order matches it).
#include "runtime/src/cpu/Kernels.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace kiln::cpu {
namespace {

/// Writes the indices of the `k` largest of values[0, n) (skipping entries
/// already marked in `taken`, which it updates), largest first, lower index
/// first among equal values.
void topK(const float *values, int64_t n, int64_t k, char *taken,
          int32_t *result) {
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (taken[i])
        continue;
      if (best < 0 || values[i] > values[best] ||
          (std::isnan(values[best]) && !std::isnan(values[i])))
        best = i;
    }
    if (best < 0)
      best = 0; // k > n: cannot happen for validated plans
    taken[best] = 1;
    result[j] = static_cast<int32_t>(best);
  }
}

} // namespace

void moeGate(const float *x, int64_t tokens, int64_t dim, Weight w,
             int64_t experts, Weight bias, const MoeGateParams &params,
             float *weights, int32_t *indices, float *logits) {
  linear(x, tokens, dim, w, experts, Weight{}, logits);
  int64_t k = params.topK;
  int64_t groups = params.method == TopkMethod::Greedy
                       ? 1
                       : std::max<int64_t>(1, params.nGroup);
  int64_t perGroup = experts / groups;
  bool useBias = params.method == TopkMethod::NoauxTc && bias.data;
#pragma omp parallel
  {
    // Per-thread scratch on the stack: no allocation in the hot loop.
    std::array<float, kMaxExperts> scores, choice, groupScore;
    std::array<char, kMaxExperts> taken;
    std::array<int32_t, kMaxExperts> picked;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const float *lt = logits + t * experts;
      if (params.scoring == ScoringFunc::Softmax) {
        float mx = lt[0];
        for (int64_t e = 1; e < experts; ++e)
          mx = std::max(mx, lt[e]);
        float sum = 0;
        for (int64_t e = 0; e < experts; ++e) {
          scores[e] = std::exp(lt[e] - mx);
          sum += scores[e];
        }
        for (int64_t e = 0; e < experts; ++e)
          scores[e] /= sum;
      } else {
        for (int64_t e = 0; e < experts; ++e)
          scores[e] = 1.0f / (1.0f + std::exp(-lt[e]));
      }
      for (int64_t e = 0; e < experts; ++e)
        choice[e] = scores[e] + (useBias ? loadWeight(bias, e) : 0.0f);

      if (params.method != TopkMethod::Greedy && groups > 1) {
        for (int64_t g = 0; g < groups; ++g) {
          const float *c = choice.data() + g * perGroup;
          if (params.method == TopkMethod::GroupLimitedGreedy) {
            // V2: a group scores its best expert.
            groupScore[g] = *std::max_element(c, c + perGroup);
          } else {
            // V3: a group scores the sum of its two best (biased) experts.
            std::fill(taken.begin(), taken.begin() + perGroup, 0);
            int64_t two = std::min<int64_t>(2, perGroup);
            topK(c, perGroup, two, taken.data(), picked.data());
            float sum = 0;
            for (int64_t j = 0; j < two; ++j)
              sum += c[picked[j]];
            groupScore[g] = sum;
          }
        }
        int64_t keep = std::clamp<int64_t>(params.topkGroup, 0, groups);
        std::fill(taken.begin(), taken.begin() + groups, 0);
        topK(groupScore.data(), groups, keep, taken.data(), picked.data());
        // Experts of dropped groups: HF masks them with 0 (V2) or -inf (V3).
        float masked = params.method == TopkMethod::GroupLimitedGreedy
                           ? 0.0f
                           : -std::numeric_limits<float>::infinity();
        for (int64_t g = 0; g < groups; ++g)
          if (!taken[g])
            for (int64_t e = g * perGroup; e < (g + 1) * perGroup; ++e) {
              choice[e] = masked;
              scores[e] = 0.0f; // V2 takes its weights from masked scores
            }
      }

      int32_t *it = indices + t * k;
      float *wt = weights + t * k;
      std::fill(taken.begin(), taken.begin() + experts, 0);
      topK(choice.data(), experts, k, taken.data(), it);
      float sum = 0;
      for (int64_t j = 0; j < k; ++j) {
        wt[j] = scores[it[j]];
        sum += wt[j];
      }
      float scale = static_cast<float>(params.routedScalingFactor);
      if (params.normTopkProb) {
        float denominator = sum + 1e-20f;
        for (int64_t j = 0; j < k; ++j)
          wt[j] /= denominator;
      }
      for (int64_t j = 0; j < k; ++j)
        wt[j] *= scale;
    }
  }
}

void moeDispatch(const float *x, const int32_t *indices, int64_t tokens,
                 int64_t topK, int64_t dim, int64_t experts, float *routed,
                 int32_t *offsets, int32_t *slots, int32_t *selectionRows) {
  int64_t n = tokens * topK;
  // Counting sort by expert, stable in selection order.
  std::fill(offsets, offsets + experts + 1, 0);
  for (int64_t i = 0; i < n; ++i)
    ++offsets[indices[i] + 1];
  for (int64_t e = 0; e < experts; ++e)
    offsets[e + 1] += offsets[e];
  std::array<int32_t, kMaxExperts> cursor;
  std::copy(offsets, offsets + experts, cursor.begin());
  for (int64_t i = 0; i < n; ++i) {
    selectionRows[i] = cursor[indices[i]]++;
    slots[selectionRows[i]] = static_cast<int32_t>(i);
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const float *src = x + (slots[r] / topK) * dim;
    std::copy(src, src + dim, routed + r * dim);
  }
}

void moeCombine(const float *y, const float *weights,
                const int32_t *selectionRows, int64_t tokens, int64_t topK,
                int64_t dim, float *out) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    float *ot = out + t * dim;
    std::fill(ot, ot + dim, 0.0f);
    for (int64_t j = 0; j < topK; ++j) {
      float wj = weights[t * topK + j];
      const float *yr =
          y + static_cast<int64_t>(selectionRows[t * topK + j]) * dim;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i)
        ot[i] += wj * yr[i];
    }
  }
}

} // namespace kiln::cpu
