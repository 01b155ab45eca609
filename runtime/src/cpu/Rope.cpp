// Rotary position embedding: the frequency schemes of Hugging Face's
// modeling_rope_utils (default, yarn, llama3), evaluated in double.
#include "runtime/src/cpu/Kernels.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numbers>

namespace kiln::cpu {
namespace {

/// HF's get_mscale / DeepSeek's yarn_get_mscale.
double yarnMscale(double scale, double mscale) {
  if (scale <= 1.0)
    return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

/// HF's find_correction_dim.
double correctionDim(double rotations, double dim, double base,
                     double maxPosition) {
  return dim * std::log(maxPosition / (rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(base));
}

} // namespace

double ropeAttentionFactor(const RopeParams &p) {
  if (p.kind != RopeKind::Yarn)
    return 1.0;
  // HF (_compute_yarn_parameters): the ratio when both mscale and
  // mscale_all_dim are non-zero, else get_mscale(factor) with mscale 1.
  if (p.mscale != 0.0 && p.mscaleAllDim != 0.0)
    return yarnMscale(p.factor, p.mscale) /
           yarnMscale(p.factor, p.mscaleAllDim);
  return yarnMscale(p.factor, 1.0);
}

void ropeInverseFrequencies(const RopeParams &p, int64_t dim, double *invFreq) {
  int64_t half = dim / 2;
  double d = static_cast<double>(dim);
  // theta^(-2i/d), as HF's base ** (arange(0, dim, 2) / dim).
  for (int64_t i = 0; i < half; ++i)
    invFreq[i] = 1.0 / std::pow(p.theta, static_cast<double>(2 * i) / d);
  switch (p.kind) {
  case RopeKind::Plain:
    return;
  case RopeKind::Yarn: {
    // find_correction_range with HF's default truncate=True: floor/ceil,
    // clamped to [0, dim - 1].
    double maxPos = static_cast<double>(p.originalMaxPosition);
    double low = std::floor(correctionDim(p.betaFast, d, p.theta, maxPos));
    double high = std::ceil(correctionDim(p.betaSlow, d, p.theta, maxPos));
    low = std::max(low, 0.0);
    high = std::min(high, d - 1.0);
    if (low == high)
      high += 0.001; // HF's singularity guard
    for (int64_t i = 0; i < half; ++i) {
      double ramp =
          std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      double extrapolation = 1.0 - ramp; // HF's inv_freq_extrapolation_factor
      double interpolated = invFreq[i] / p.factor;
      invFreq[i] =
          interpolated * (1.0 - extrapolation) + invFreq[i] * extrapolation;
    }
    return;
  }
  case RopeKind::Llama3: {
    double oldContext = static_cast<double>(p.originalMaxPosition);
    double lowWavelen = oldContext / p.lowFreqFactor;
    double highWavelen = oldContext / p.highFreqFactor;
    for (int64_t i = 0; i < half; ++i) {
      double f = invFreq[i];
      double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < highWavelen)
        continue; // high frequency: unchanged
      if (wavelen > lowWavelen) {
        invFreq[i] = f / p.factor;
        continue;
      }
      double smooth = (oldContext / wavelen - p.lowFreqFactor) /
                      (p.highFreqFactor - p.lowFreqFactor);
      invFreq[i] = (1.0 - smooth) * f / p.factor + smooth * f;
    }
    return;
  }
  }
}

void rope(const float *x, const int32_t *positions, int64_t tokens,
          int64_t heads, int64_t dim, const RopeParams &params, float *out) {
  int64_t half = dim / 2;
  // Scratch on the stack: no allocation in the hot loop.
  std::array<double, kMaxRotaryDim / 2> invFreq;
  ropeInverseFrequencies(params, dim, invFreq.data());
  double attention = ropeAttentionFactor(params);
#pragma omp parallel
  {
    std::array<float, kMaxRotaryDim> cosSin;
    float *cosv = cosSin.data(), *sinv = cosSin.data() + half;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const float *xt = x + t * heads * dim;
      float *ot = out + t * heads * dim;
      int32_t pos = positions[t];
      if (pos < 0) {
        std::copy(xt, xt + heads * dim, ot);
        continue;
      }
      for (int64_t i = 0; i < half; ++i) {
        double angle = static_cast<double>(pos) * invFreq[i];
        cosv[i] = static_cast<float>(std::cos(angle) * attention);
        sinv[i] = static_cast<float>(std::sin(angle) * attention);
      }
      for (int64_t h = 0; h < heads; ++h) {
        const float *xh = xt + h * dim;
        float *oh = ot + h * dim;
        if (params.interleaved) {
          // Adjacent pairs (2i, 2i + 1), kept in place.
          for (int64_t i = 0; i < half; ++i) {
            float a = xh[2 * i], b = xh[2 * i + 1];
            oh[2 * i] = a * cosv[i] - b * sinv[i];
            oh[2 * i + 1] = b * cosv[i] + a * sinv[i];
          }
        } else {
          // rotate_half: pairs (i, i + dim / 2).
#pragma omp simd
          for (int64_t i = 0; i < half; ++i) {
            float a = xh[i], b = xh[i + half];
            oh[i] = a * cosv[i] - b * sinv[i];
            oh[i + half] = b * cosv[i] + a * sinv[i];
          }
        }
      }
    }
  }
}

} // namespace kiln::cpu
