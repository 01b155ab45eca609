// Token sampling from a row of logits: greedy, or temperature + top-k +
// top-p (nucleus) sampling with a seeded, portable random stream.
#ifndef KILN_RUNTIME_SAMPLER_H
#define KILN_RUNTIME_SAMPLER_H

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace kiln {

struct SamplingParams {
  /// Softmax temperature; 0 (or less) selects greedy decoding (argmax).
  float temperature = 0.0f;
  /// Keep only the `topK` most likely tokens; 0 disables the filter.
  int topK = 0;
  /// Keep the smallest set of most likely tokens whose probability reaches
  /// `topP` (after top-k); 1 disables the filter.
  float topP = 1.0f;
  /// Seed of the std::mt19937_64 stream; the same seed gives the same draws
  /// on every platform and standard library.
  uint64_t seed = 0;
};

class Sampler {
public:
  explicit Sampler(SamplingParams params);

  /// Picks a token of `logits[0, vocab)`. Greedy: the argmax, lowest index
  /// among equal maxima (NaN logits are never picked unless all are NaN).
  /// Otherwise softmax(logits / temperature) restricted to the top-k, then to
  /// the smallest prefix (by decreasing probability, lower index first on
  /// ties) whose cumulative probability is >= top_p, renormalized, and drawn
  /// with one 53-bit uniform double per call.
  int32_t sample(const float *logits, int64_t vocab);

  const SamplingParams &params() const { return params_; }

  /// The next uniform double in [0, 1): the top 53 bits of one engine draw.
  double uniform();

private:
  SamplingParams params_;
  std::mt19937_64 engine_;
  std::vector<std::pair<float, int32_t>> candidates_; // reused across calls
  std::vector<double> probs_;
};

} // namespace kiln

#endif // KILN_RUNTIME_SAMPLER_H
