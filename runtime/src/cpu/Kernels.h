// CPU kernels of the runtime: one function per kernel kind the execution
// plan launches. Activations are fp32 and contiguous (row-major, last
// dimension fastest); weights may be fp32, bf16, f16, and for the GEMMs
// (linear, groupedLinear, headLinear) FP8 e4m3fn with DeepSeek-V3 block
// scales; every accumulation is fp32. Kernels are multithreaded with OpenMP
// over independent rows/columns and written so the compiler vectorizes their
// inner loops; the hot ones (linear, attention) switch to AVX2/FMA/F16C code
// at run time when the CPU has it. They never allocate on the heap except
// where noted, and never fail: the executor validates dimensions and indices
// before it launches them. Other kernels given F8E4M3 (with scales) or I32
// weights abort.
#ifndef KILN_RUNTIME_CPU_KERNELS_H
#define KILN_RUNTIME_CPU_KERNELS_H

#include <cstddef>
#include <cstdint>

namespace kiln::cpu {

/// Bounds that let kernels keep their scratch on the stack; the plan
/// verifier rejects plans beyond them.
inline constexpr int64_t kMaxExperts = 4096;
inline constexpr int64_t kMaxRotaryDim = 4096;

/// exp(x) for the softmax inner loops: Cephes' single-precision polynomial
/// (within 2 ulp of expf over the range that does not underflow), written
/// so that `omp simd` loops vectorize it instead of calling libm per key.
/// Inputs are <= 0 there; below -87.3 the result is 0; NaN stays NaN.
[[gnu::always_inline]] inline float softmaxExp(float x) {
  if (!(x >= -87.3f)) // underflow, or NaN (which propagates)
    return x < -87.3f ? 0.0f : x;
  x = x > 88.7f ? 88.7f : x;
  float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

enum class ElementType : uint8_t { F32, BF16, F16, F8E4M3, I32 };

/// A weight tensor in its stored dtype.
struct Weight {
  const void *data = nullptr;
  ElementType type = ElementType::F32;
  /// F8E4M3 only: fp32 dequantization scales (DeepSeek's weight_scale_inv,
  /// w = code * scale), one per [blockRows, blockCols] block of each [out, in]
  /// matrix, stored row-major [ceil(out / blockRows), ceil(in / blockCols)],
  /// matrices (experts of groupedLinear, heads of headLinear) one after
  /// another.
  const float *scale = nullptr;
  int64_t blockRows = 0, blockCols = 0;
};

/// FP8 GEMMs quantize their input activations as DeepSeek-V3 does: per row,
/// per w.blockCols channels, s = max(amax, 1e-4) / 448 (rounded up to a power
/// of two when pow2Scale, i.e. ue8m0), code = floatToE4m3(x / s), into
/// `scratch` (fp8ActivationScratch(rows, in, blockCols) floats); every K
/// block's fp32 partial sum of code products is multiplied by s_x * s_w and
/// accumulated in fp32. A NaN weight code makes its outputs NaN.
struct Fp8Activations {
  float *scratch = nullptr;
  bool pow2Scale = false;
};
int64_t fp8ActivationScratch(int64_t rows, int64_t in, int64_t blockCols);

/// Rotary embedding parameters (see `#kiln.rope` in the dialect).
enum class RopeKind : uint8_t { Plain, Yarn, Llama3 };
struct RopeParams {
  RopeKind kind = RopeKind::Plain;
  double theta = 10000.0;
  double factor = 1.0;
  int64_t originalMaxPosition = 0;
  double betaFast = 32.0;
  double betaSlow = 1.0;
  double mscale = 1.0;
  double mscaleAllDim = 0.0;
  double lowFreqFactor = 1.0;
  double highFreqFactor = 4.0;
  bool interleaved = false;
};

enum class ScoringFunc : uint8_t { Softmax, Sigmoid };
enum class TopkMethod : uint8_t { Greedy, GroupLimitedGreedy, NoauxTc };
struct MoeGateParams {
  ScoringFunc scoring = ScoringFunc::Softmax;
  TopkMethod method = TopkMethod::Greedy;
  int64_t topK = 1;
  int64_t nGroup = 1;
  int64_t topkGroup = 1;
  bool normTopkProb = false;
  double routedScalingFactor = 1.0;
};

/// Bytes per element of `type` (FP8: 1).
size_t elementSize(ElementType type);

/// Element `index` of a weight as fp32 (fp32, bf16 and f16 weights, and
/// F8E4M3 without scales).
float loadWeight(Weight w, int64_t index);

/// The kernels use AVX2/FMA/F16C code paths when the CPU has them; tests turn
/// them off to exercise the portable paths. Not meant to be toggled while
/// kernels run.
void setVectorKernels(bool enabled);
/// Whether the AVX2 paths are in use (enabled and supported by the CPU).
bool vectorKernelsActive();
/// Whether those paths may use AVX-512VL (for its 32 vector registers: the
/// FP8 GEMM tiles) where the CPU has it; on by default, tests turn it off to
/// exercise the AVX2-only code.
void setAvx512Kernels(bool enabled);
bool avx512KernelsActive();

/// out[t, :] = table[tokens[t], :]; tokens are in [0, vocab).
void embedding(const int32_t *tokens, int64_t count, Weight table, int64_t dim,
               float *out);

/// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for `rows` rows.
void rmsNorm(const float *x, int64_t rows, int64_t dim, Weight weight,
             float eps, float *out);

/// y[r, o] = sum_i x[r, i] * w[o, i] + bias[o]; w is [out, in]. `bias.data`
/// may be null (an FP8 w still takes a fp32/bf16/f16 bias). FP8 w quantizes x
/// into `act` (rows rows). With the vector kernels, 40 or more rows of a
/// non-FP8 w (here and per expert in groupedLinear) go to a packed GEMM whose
/// per-thread scratch (about 270 KiB) is allocated on a thread's first such
/// call and kept.
void linear(const float *x, int64_t rows, int64_t in, Weight w, int64_t out,
            Weight bias, float *y, Fp8Activations act = {});

/// kiln.quantize_fp8: each row of x [rows, in] quantized per blockCols
/// values exactly as FP8 GEMMs quantize their input (Fp8Activations):
/// e4m3 codes [rows, in] and scales [rows, ceil(in / blockCols)].
void quantizeFp8(const float *x, int64_t rows, int64_t in, int64_t blockCols,
                 bool pow2, uint8_t *codes, float *scales);

/// linear for an FP8 w whose input was quantized beforehand (quantizeFp8
/// with w.blockCols): the same result as linear on the unquantized rows.
/// `scratch` holds fp8ActivationScratch(rows, in, w.blockCols) floats.
void linearQuantized(const uint8_t *codes, const float *scales, int64_t rows,
                     int64_t in, Weight w, int64_t out, Weight bias, float *y,
                     float *scratch);

/// Per-head projection: y[r, h, :] = x[r, h, :] w[h]^T for x [rows, heads,
/// in], w [heads, out, in], y [rows, heads, out]. `scratch` holds
/// headLinearScratch(rows, in, out) floats; an FP8 w quantizes the rows *
/// heads rows of `in` into `act`. With `xWidth` (> 0), x is [rows, heads,
/// xWidth] and each head's columns [xOffset, xOffset + in) are read.
void headLinear(const float *x, int64_t rows, int64_t heads, int64_t in,
                Weight w, int64_t out, float *y, float *scratch,
                Fp8Activations act = {}, int64_t xOffset = 0,
                int64_t xWidth = 0);
int64_t headLinearScratch(int64_t rows, int64_t in, int64_t out);

void add(const float *a, const float *b, int64_t count, float *out);

/// out = silu(gate) * up.
void swiglu(const float *gate, const float *up, int64_t count, float *out);

/// out[r, :] = x[r, offset : offset + size] for rows of length `inDim`.
void slice(const float *x, int64_t rows, int64_t inDim, int64_t offset,
           int64_t size, float *out);

/// Concatenates rows of `count` inputs along the last dimension: input `i`
/// has rows of `dims[i]` values; out rows have sum(dims) values.
void concat(const float *const *inputs, const int64_t *dims, int64_t count,
            int64_t rows, float *out);

/// out[r, j, :] = x[r, 0, :] for j < repeat: a size-1 dimension followed by
/// `inner` contiguous values is repeated `repeat` times.
void broadcast(const float *x, int64_t rows, int64_t repeat, int64_t inner,
               float *out);

/// Rotates the last dimension (`dim`, even) of x [tokens, heads, dim] by the
/// angle of positions[t]; a negative position (padding) copies the row.
/// Angles (position * inv_freq) and cos/sin are computed in double, times
/// ropeAttentionFactor, then rounded to fp32. interleaved: pairs (2i, 2i+1)
/// in place; otherwise HF's rotate_half pairs (i, i + dim/2); frequency i
/// rotates pair i. `out` may equal `x`. dim <= kMaxRotaryDim (scratch is
/// on the stack).
void rope(const float *x, const int32_t *positions, int64_t tokens,
          int64_t heads, int64_t dim, const RopeParams &params, float *out);

/// YaRN's cos/sin scale, as HF's _compute_yarn_parameters: mscale(factor,
/// mscale) / mscale(factor, mscale_all_dim) when both are non-zero, else
/// mscale(factor, 1); mscale(s, m) = 0.1 m ln(s) + 1 for s > 1, else 1. 1 for
/// the other schemes.
double ropeAttentionFactor(const RopeParams &params);

/// The inverse frequencies of the scheme, `dim / 2` values (double
/// precision so that far positions stay accurate). plain: theta^(-2i/dim);
/// yarn: HF's ramp between inv_freq and inv_freq / factor over
/// find_correction_range(beta_fast, beta_slow) with truncate = true (floor /
/// ceil, HF's default); llama3: HF's piecewise low/high frequency scaling.
void ropeInverseFrequencies(const RopeParams &params, int64_t dim,
                            double *invFreq);

/// Causal attention. q [batch, seq, heads, dk]; k and v are read from
/// per-sequence rows: kv head g of key j of sequence b at k + b *
/// kBatchStride + j * kRowStride + g * dk (v likewise with dv and its own
/// strides); a row stride of 0 means kvHeads * dk (kvHeads * dv), i.e.
/// contiguous rows. Larger row strides read a column range of wider cache
/// entries (absorbed MLA's values are the c_kv prefix of [c_kv | k_pe]). Query
/// (b, s) attends to keys j <= positions[b, s] with j < kvLengths[b]; a
/// negative position yields zeros, as does an empty key range. Query head h
/// reads kv head h / (heads / kvHeads). Softmax in fp32 (online, in blocks of
/// keys). out [batch, seq, heads, dv].
void attention(const float *q, const float *k, const float *v,
               const int32_t *positions, const int32_t *kvLengths,
               int64_t batch, int64_t seq, int64_t heads, int64_t kvHeads,
               int64_t dk, int64_t dv, int64_t kBatchStride,
               int64_t vBatchStride, float scale, float *out,
               int64_t kRowStride = 0, int64_t vRowStride = 0);

/// DeepSeekMoE router for `tokens` rows of x [tokens, dim]; w is
/// [experts, dim]; `bias` (noaux_tc only) is [experts] or null data.
/// Writes weights [tokens, topK] and indices [tokens, topK]. Logits and scores
/// are fp32. Experts are written by decreasing selection score (HF leaves the
/// order unspecified); ties between equal scores (experts or groups) go to the
/// lower index. Experts of dropped groups score 0 for group_limited_greedy
/// and -inf for noaux_tc, as HF masks them. Weights: the unbiased scores,
/// divided by (sum + 1e-20) when normTopkProb, times routedScalingFactor.
/// `logits` is caller-provided scratch of [tokens, experts] floats;
/// experts <= kMaxExperts.
void moeGate(const float *x, int64_t tokens, int64_t dim, Weight w,
             int64_t experts, Weight bias, const MoeGateParams &params,
             float *weights, int32_t *indices, float *logits);

/// Groups the tokens * topK selections by expert (stable: token order within
/// an expert). routed [tokens * topK, dim], offsets [experts + 1], slots
/// [tokens * topK] (the flat selection index of each routed row) and
/// selectionRows [tokens * topK], its inverse (the routed row of each
/// selection). experts <= kMaxExperts.
void moeDispatch(const float *x, const int32_t *indices, int64_t tokens,
                 int64_t topK, int64_t dim, int64_t experts, float *routed,
                 int32_t *offsets, int32_t *slots, int32_t *selectionRows);

/// Rows [offsets[e], offsets[e+1]) of x [rows, in] times expert e's [out, in]
/// matrix of w [experts, out, in]. An FP8 w quantizes the offsets[experts]
/// rows into `act`.
void groupedLinear(const float *x, int64_t in, Weight w, int64_t experts,
                   int64_t out, const int32_t *offsets, float *y,
                   Fp8Activations act = {});

/// out[t, :] = sum_k weights[t, k] * y[selectionRows[t * topK + k], :],
/// summed in k order.
void moeCombine(const float *y, const float *weights,
                const int32_t *selectionRows, int64_t tokens, int64_t topK,
                int64_t dim, float *out);

//===----------------------------------------------------------------------===//
// Paged KV cache (runtime/src/cpu/Paged.cpp)
//===----------------------------------------------------------------------===//
//
// A paged cache stores tokens in fixed-size blocks of `blockTokens` rows
// taken from a pool shared by all sequences (see PagedKvCache). Row r of
// block `id` of a slot is at data + (id * blockTokens + r) * entry, and
// sequence b's position p is in block blockTables[b * tableStride + p /
// blockTokens], row p % blockTokens. Kernels trust the tables: the caller
// checks that every position and kv length it passes is covered by the
// blocks the sequence holds.

/// Writes new tokens into a paged slot of `entry` floats per token: x[b, s, :]
/// goes to position positions[b, s] of sequence b. Negative positions (padding)
/// are skipped.
void kvAppendPaged(const float *x, const int32_t *positions, int64_t batch,
                   int64_t seq, int64_t entry, float *slotData,
                   const int32_t *blockTables, int64_t tableStride,
                   int64_t blockTokens);

/// Where keys (or values) of kv head `h` at a token row live in a paged slot:
/// data + row * rowStride + offset + h * headStride, for rows numbered as
/// above (rowStride is the slot's entry). Separate views of one slot let V
/// be a column range of the K entry (absorbed MLA: K = columns [0, 576)
/// and V = columns [0, 512) of the 576-wide latent).
struct PagedView {
  const float *data = nullptr;
  int64_t rowStride = 0;
  int64_t headStride = 0;
  int64_t offset = 0;
};

/// Paged block tables shared by K and V: one row of `tableStride` block ids
/// per sequence of the batch, blocks of `blockTokens` rows.
struct BlockTables {
  const int32_t *ids = nullptr;
  int64_t stride = 0;
  int64_t blockTokens = 0;
};

/// Most context splits per query that attentionPaged uses.
inline constexpr int64_t kMaxAttentionSplits = 64;

/// Floats of scratch that let attentionPaged split the context of up to
/// `queries` (batch * seq) query rows as far as it would with the current
/// OpenMP thread count. Sized once (e.g. for the decode batch); calls with
/// fewer rows fit too.
int64_t attentionPagedScratch(int64_t queries, int64_t heads, int64_t dv);

/// `attention` reading keys and values through block tables: query (b, s)
/// of q [batch, seq, heads, dk] attends to positions j <= positions[b, s]
/// with j < kvLengths[b]; a negative position yields zeros, as does an empty
/// key range; query head h reads kv head h / (heads / kvHeads); fp32 online
/// softmax. out [batch, seq, heads, dv]. When batch * kvHeads work is too
/// little to occupy the threads (decode), the context of each query is split
/// into ranges of whole 64-key blocks whose softmax statistics and partial
/// outputs go to `scratch` and are merged afterwards (equal to the unsplit
/// result up to fp32 rounding); the splits are capped by `scratchFloats`
/// (see attentionPagedScratch; 0 never splits).
void attentionPaged(const float *q, PagedView k, PagedView v,
                    BlockTables tables, const int32_t *positions,
                    const int32_t *kvLengths, int64_t batch, int64_t seq,
                    int64_t heads, int64_t kvHeads, int64_t dk, int64_t dv,
                    float scale, float *out, float *scratch,
                    int64_t scratchFloats);

} // namespace kiln::cpu

#endif // KILN_RUNTIME_CPU_KERNELS_H
