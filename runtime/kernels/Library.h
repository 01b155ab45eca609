// The CUDA executor's library kernels for the row-local operations
// (embedding, RMSNorm, elementwise, slice/concat/broadcast, RoPE) and the
// MoE routing steps, on FusedPrelude.h: each builds as a CUDA kernel and as
// a host function, and the host build is tested against runtime/src/cpu
// (tests/runtime/DeviceLibraryTest.cpp). Operations inside `kiln.fused`
// groups run as generated kernels instead; these serve the rest.
//
// Grids: a token-wise kernel runs one block per token (grid.x = tokens); an
// elementwise one one block per kElementsPerBlock elements.
#ifndef KILN_KERNELS_LIBRARY_H
#define KILN_KERNELS_LIBRARY_H

#include "FusedPrelude.h"

KILN_KERNELS_BEGIN

/// Elements one block of an elementwise kernel covers: one batch of loads
/// per thread (forEachElement).
constexpr int64_t kElementsPerBlock =
    int64_t{KILN_BLOCK_THREADS} * kLoadsInFlight;
/// The most experts a device router takes (DeepSeek-V3 has 256).
constexpr int kDeviceMaxExperts = 256;
/// The most rotary dimensions the device RoPE takes.
constexpr int kDeviceMaxRotaryHalf = 256;
/// The most inputs of a device concat.
constexpr int kDeviceMaxConcat = 8;

inline Dim3 elementwiseGrid(int64_t elements) {
  return {
      static_cast<int>((elements + kElementsPerBlock - 1) / kElementsPerBlock),
      1, 1};
}
inline Dim3 tokenGrid(int64_t tokens) {
  return {static_cast<int>(tokens), 1, 1};
}

/// The element range [begin, end) of block `block` over `count` elements.
struct ElementRange {
  int64_t begin, end;
};
KILN_FN ElementRange blockElements(Dim3 block, int64_t count) {
  int64_t begin = block.x * kElementsPerBlock;
  int64_t end = begin + kElementsPerBlock;
  return {begin, end < count ? end : count};
}

// Defines kiln_<name>_<suffix> from the body template instantiated for W.
#define KILN_TYPED_KERNEL(name, suffix, Params, body, ...)                     \
  KILN_FN void name##_##suffix##_block(::kiln::Dim3 block, const Params &p) {  \
    body<__VA_ARGS__>(block, p);                                               \
  }                                                                            \
  KILN_KERNEL(name##_##suffix, Params)

// -- Embedding: out[t, :] = table[tokens[t], :] (tokens checked by the host).

struct EmbeddingParams {
  const int32_t *tokens;
  const void *table; // [vocab, dim]
  float *out;        // [tokens, dim]
  int64_t dim;
};

template <class W>
KILN_FN void embeddingBlock(Dim3 block, const EmbeddingParams &p) {
  embedding(p.tokens + block.x, static_cast<const W *>(p.table), p.dim,
            p.out + int64_t{block.x} * p.dim);
}
KILN_TYPED_KERNEL(kiln_embedding, f32, EmbeddingParams, embeddingBlock, float)
KILN_TYPED_KERNEL(kiln_embedding, bf16, EmbeddingParams, embeddingBlock, Bf16)
KILN_TYPED_KERNEL(kiln_embedding, f16, EmbeddingParams, embeddingBlock, F16)

// -- RMSNorm of one row per block.

struct RmsNormParams {
  const float *x;
  const void *weight; // [dim]
  float *out;
  int dim;
  float epsilon;
};

template <class W>
KILN_FN void rmsNormBlock(Dim3 block, const RmsNormParams &p) {
  int64_t row = int64_t{block.x} * p.dim;
  rmsNorm(p.x + row, 1, p.dim, static_cast<const W *>(p.weight), p.epsilon,
          p.out + row);
}
KILN_TYPED_KERNEL(kiln_rms_norm, f32, RmsNormParams, rmsNormBlock, float)
KILN_TYPED_KERNEL(kiln_rms_norm, bf16, RmsNormParams, rmsNormBlock, Bf16)
KILN_TYPED_KERNEL(kiln_rms_norm, f16, RmsNormParams, rmsNormBlock, F16)

// -- Elementwise.

struct BinaryParams {
  const float *a, *b;
  float *out;
  int64_t count;
};

KILN_FN void kiln_add_block(Dim3 block, const BinaryParams &p) {
  ElementRange r = blockElements(block, p.count);
  forEachElement(
      r.begin, r.end, [&](int64_t i) { return p.a[i] + p.b[i]; },
      StoreTo{p.out});
}
KILN_KERNEL(kiln_add, BinaryParams)

/// a = gate, b = up.
KILN_FN void kiln_swiglu_block(Dim3 block, const BinaryParams &p) {
  ElementRange r = blockElements(block, p.count);
  forEachElement(
      r.begin, r.end, [&](int64_t i) { return swiglu(p.a[i], p.b[i]); },
      StoreTo{p.out});
}
KILN_KERNEL(kiln_swiglu, BinaryParams)

/// bf16 bits of x (round to nearest even): the input of cuBLASLt's bf16
/// GEMMs.
struct ToBf16Params {
  const float *x;
  uint16_t *out;
  int64_t count;
};

KILN_FN void kiln_to_bf16_block(Dim3 block, const ToBf16Params &p) {
  ElementRange r = blockElements(block, p.count);
  forEachElement(
      r.begin, r.end, [&](int64_t i) { return encodeBf16(p.x[i]); },
      [&](int64_t i, uint16_t bits) { p.out[i] = bits; });
}
KILN_KERNEL(kiln_to_bf16, ToBf16Params)

/// out[r, :] = x[r, offset : offset + size] over rows of inDim.
struct SliceParams {
  const float *x;
  float *out;
  int64_t rows, inDim, offset, size;
};

KILN_FN void kiln_slice_block(Dim3 block, const SliceParams &p) {
  ElementRange r = blockElements(block, p.rows * p.size);
  forEachElement(
      r.begin, r.end,
      [&](int64_t j) {
        return p.x[(j / p.size) * p.inDim + p.offset + j % p.size];
      },
      StoreTo{p.out});
}
KILN_KERNEL(kiln_slice, SliceParams)

/// Rows of the inputs side by side: out rows of outDim = sum of dims.
struct ConcatParams {
  const float *inputs[kDeviceMaxConcat];
  int64_t dims[kDeviceMaxConcat];
  int count;
  float *out;
  int64_t rows, outDim;
};

KILN_FN void kiln_concat_block(Dim3 block, const ConcatParams &p) {
  ElementRange r = blockElements(block, p.rows * p.outDim);
  forEachElement(
      r.begin, r.end,
      [&](int64_t j) {
        int64_t row = j / p.outDim, column = j % p.outDim;
        int input = 0;
        while (column >= p.dims[input]) // the dims sum to outDim
          column -= p.dims[input++];
        return p.inputs[input][row * p.dims[input] + column];
      },
      StoreTo{p.out});
}
KILN_KERNEL(kiln_concat, ConcatParams)

/// out[r, k, :] = x[r, 0, :] for k < repeat, rows of `inner` values.
struct BroadcastParams {
  const float *x;
  float *out;
  int64_t rows, repeat, inner;
};

KILN_FN void kiln_broadcast_block(Dim3 block, const BroadcastParams &p) {
  ElementRange r = blockElements(block, p.rows * p.repeat * p.inner);
  forEachElement(
      r.begin, r.end,
      [&](int64_t j) {
        return p.x[(j / (p.repeat * p.inner)) * p.inner + j % p.inner];
      },
      StoreTo{p.out});
}
KILN_KERNEL(kiln_broadcast, BroadcastParams)

// -- RoPE of one token's heads per block, as cpu::rope (and the prelude's
// rope, with the rotary size known only at run time).

struct RopeParams {
  const float *x; // [tokens, heads, 2 * half]
  const int32_t *positions;
  const double *invFreq; // [half], cpu::ropeInverseFrequencies
  float *out;
  int heads, half;
  double attention; // cpu::ropeAttentionFactor
  int interleaved;
};

KILN_FN void kiln_rope_block(Dim3 block, const RopeParams &p) {
  int dim = 2 * p.half;
  int64_t row = int64_t{block.x} * p.heads * dim;
  const float *x = p.x + row;
  float *out = p.out + row;
  int32_t position = p.positions[block.x];
  if (position < 0) {
    copy(x, p.heads * dim, out);
    return;
  }
  KILN_SHARED float cosv[kDeviceMaxRotaryHalf], sinv[kDeviceMaxRotaryHalf];
  for (int i = KILN_THREAD; i < p.half; i += KILN_THREADS) {
    double angle = static_cast<double>(position) * p.invFreq[i];
    cosv[i] = static_cast<float>(cos(angle) * p.attention);
    sinv[i] = static_cast<float>(sin(angle) * p.attention);
  }
  KILN_SYNC();
  rotatePairs(x, p.heads, p.half, cosv, sinv, p.interleaved != 0, out);
}
KILN_KERNEL(kiln_rope, RopeParams)

// -- MoE: the router per token, then dispatch (route + gather rows) and
// combine (weighted sum), as cpu::moeGate / moeDispatch / moeCombine.

struct MoeGateParams {
  const float *x;     // [tokens, dim]
  const void *weight; // [experts, dim]
  const void *bias;   // [experts] or null
  float *weights;     // [tokens, topK]
  int32_t *indices;   // [tokens, topK]
  int dim, experts, topK;
  MoeGateConfig config;
};

template <class W, class B>
KILN_FN void moeGateBlock(Dim3 block, const MoeGateParams &p) {
  int64_t t = block.x;
  moeGateN<kDeviceMaxExperts>(
      p.x + t * p.dim, p.dim, static_cast<const W *>(p.weight),
      static_cast<const B *>(p.bias), p.experts, p.topK, p.config,
      p.weights + t * p.topK, p.indices + t * p.topK);
}
// Router weight x bias element types.
KILN_TYPED_KERNEL(kiln_moe_gate, f32_f32, MoeGateParams, moeGateBlock, float,
                  float)
KILN_TYPED_KERNEL(kiln_moe_gate, f32_bf16, MoeGateParams, moeGateBlock, float,
                  Bf16)
KILN_TYPED_KERNEL(kiln_moe_gate, f32_f16, MoeGateParams, moeGateBlock, float,
                  F16)
KILN_TYPED_KERNEL(kiln_moe_gate, bf16_f32, MoeGateParams, moeGateBlock, Bf16,
                  float)
KILN_TYPED_KERNEL(kiln_moe_gate, bf16_bf16, MoeGateParams, moeGateBlock, Bf16,
                  Bf16)
KILN_TYPED_KERNEL(kiln_moe_gate, bf16_f16, MoeGateParams, moeGateBlock, Bf16,
                  F16)
KILN_TYPED_KERNEL(kiln_moe_gate, f16_f32, MoeGateParams, moeGateBlock, F16,
                  float)
KILN_TYPED_KERNEL(kiln_moe_gate, f16_bf16, MoeGateParams, moeGateBlock, F16,
                  Bf16)
KILN_TYPED_KERNEL(kiln_moe_gate, f16_f16, MoeGateParams, moeGateBlock, F16, F16)

/// The lanes of the calling warp whose `value` equals this lane's (bit l:
/// lane l), every lane of the warp taking part. A host block's one thread
/// is its own warp.
KILN_FN uint32_t warpPeers(int value) {
#if defined(__CUDACC__)
  return __match_any_sync(0xffffffffu, value);
#elif defined(KILN_HOST_SIMT)
  int lanes[32];
  ::kiln::simt::allGather(value, lanes);
  uint32_t peers = 0;
  for (int lane = 0; lane < 32; ++lane)
    peers |= uint32_t{lanes[lane] == value} << lane;
  return peers;
#else
  (void)value;
  return 1;
#endif
}

KILN_FN int popCount(uint32_t bits) {
#if defined(__CUDACC__)
  return __popc(bits);
#else
  return __builtin_popcount(bits);
#endif
}

/// Counting sort of the selections by expert, stable in selection order:
/// offsets [experts + 1], slots [n] (the selection of each routed row),
/// selectionRows [n] (the routed row of each selection, which the combine
/// reads) and, where given, the experts with rows as
/// GemmParams::activeExperts takes them. One block (grid {1, 1, 1}). Each
/// warp sorts a consecutive chunk of the selections, a warp-wide step (a
/// match of equal experts) per 32 of them, into its own counters per
/// expert; a scan over (expert, warp) then gives each chunk's place. A
/// 2K-token prefill's 12K selections take 96 steps a warp, where a thread
/// per expert read all of them, twice. Out-of-range indices (never
/// made by the router) are left out. With `x`, the block also gathers the
/// routed rows (as kiln_moe_gather): the executor asks for it where they
/// are few (a decode step), saving the gather's launch.
struct MoeRouteParams {
  const int32_t *indices; // [n]
  int32_t *offsets;       // [experts + 1]
  int32_t *slots;         // [n]
  int n, experts;
  int32_t *activeExperts; // [1 + experts] or null
  int32_t *selectionRows; // [n]
  const float *x;         // [n / topK, dim] or null: no gather
  float *routed;          // [n, dim]
  int64_t dim;
  int topK;
};

/// What a route step gives one lane: its selection's expert (-1 where it
/// has none or an out-of-range one), the lanes of the same expert, and
/// whether this lane is the first of them (it moves their counter).
struct RouteStep {
  int expert;
  uint32_t peers;
  int before; // peers in lower lanes
  bool leads;
};

KILN_FN RouteStep routeStep(const MoeRouteParams &p, int i, int end) {
  int e = i < end ? p.indices[i] : -1;
  if (e < 0 || e >= p.experts)
    e = -1;
  uint32_t peers = warpPeers(e);
  uint32_t lower =
      KILN_LANE == 0 ? 0u : peers & (0xffffffffu >> (32 - KILN_LANE));
  int before = popCount(lower);
  return {e, peers, before, e >= 0 && before == 0};
}

KILN_FN void kiln_moe_route_block(Dim3, const MoeRouteParams &p) {
  constexpr int kMaxWarps = KILN_BLOCK_THREADS / 32;
  KILN_SHARED int32_t start[kDeviceMaxExperts + 1];
  // [warp][expert]: the warp's count, then where its next row goes.
  KILN_SHARED int32_t cursor[kMaxWarps * kDeviceMaxExperts];
  int warps = KILN_WARPS;
  int chunk = (p.n + warps - 1) / warps;
  int begin = KILN_WARP * chunk;
  int end = begin + chunk < p.n ? begin + chunk : p.n;
  int32_t *mine = cursor + KILN_WARP * p.experts;
  for (int i = KILN_THREAD; i < warps * p.experts; i += KILN_THREADS)
    cursor[i] = 0;
  KILN_SYNC();
  for (int first = begin; first < end; first += KILN_WARP_SIZE) {
    RouteStep s = routeStep(p, first + KILN_LANE, end);
    if (s.leads)
      mine[s.expert] += popCount(s.peers);
    KILN_SYNCWARP(); // the next step's leader may be another lane
  }
  KILN_SYNC();
  // Each expert's chunks in warp order, then the experts in order.
  for (int e = KILN_THREAD; e < p.experts; e += KILN_THREADS) {
    int total = 0;
    for (int w = 0; w < warps; ++w) {
      int count = cursor[w * p.experts + e];
      cursor[w * p.experts + e] = total;
      total += count;
    }
    start[e + 1] = total;
  }
  KILN_SYNC();
  if (KILN_THREAD == 0) {
    int active = 0, sum = 0;
    start[0] = 0;
    for (int e = 0; e < p.experts; ++e) {
      if (p.activeExperts && start[e + 1] > 0)
        p.activeExperts[1 + active++] = e;
      sum += start[e + 1];
      start[e + 1] = sum;
    }
    if (p.activeExperts)
      p.activeExperts[0] = active;
  }
  KILN_SYNC();
  for (int e = KILN_THREAD; e <= p.experts; e += KILN_THREADS)
    p.offsets[e] = start[e];
  for (int i = KILN_THREAD; i < warps * p.experts; i += KILN_THREADS)
    cursor[i] += start[i % p.experts];
  KILN_SYNC();
  for (int first = begin; first < end; first += KILN_WARP_SIZE) {
    int i = first + KILN_LANE;
    RouteStep s = routeStep(p, i, end);
    if (s.expert >= 0) {
      int row = mine[s.expert] + s.before;
      p.selectionRows[i] = row;
      p.slots[row] = i;
    }
    KILN_SYNCWARP(); // every peer read the counter
    if (s.leads)
      mine[s.expert] += popCount(s.peers);
    KILN_SYNCWARP();
  }
  if (!p.x)
    return;
  KILN_SYNC(); // every slot written
  for (int r = 0; r < start[p.experts]; ++r) {
    const float *src = p.x + int64_t{p.slots[r] / p.topK} * p.dim;
    forEachElement(
        0, p.dim, [&](int64_t i) { return src[i]; },
        StoreTo{p.routed + int64_t{r} * p.dim});
  }
}
KILN_KERNEL(kiln_moe_route, MoeRouteParams)

/// routed[r, :] = x[slots[r] / topK, :], one block per routed row of the
/// offsets[experts] that were routed.
struct MoeGatherParams {
  const float *x;
  const int32_t *slots;
  const int32_t *routedRows; // &offsets[experts]
  float *routed;
  int64_t dim;
  int topK;
};

KILN_FN void kiln_moe_gather_block(Dim3 block, const MoeGatherParams &p) {
  if (block.x >= *p.routedRows)
    return;
  const float *src = p.x + int64_t{p.slots[block.x] / p.topK} * p.dim;
  forEachElement(
      0, p.dim, [&](int64_t i) { return src[i]; },
      StoreTo{p.routed + int64_t{block.x} * p.dim});
}
KILN_KERNEL(kiln_moe_gather, MoeGatherParams)

/// out[t, :] = sum_k weights[t, k] * y[selectionRows[t * topK + k], :], in
/// k order: a block per token, as a fused kernel's kiln::moeCombine.
struct MoeCombineParams {
  const float *y;
  const float *weights;
  const int32_t *selectionRows;
  float *out;
  int64_t dim;
  int topK;
};

KILN_FN void kiln_moe_combine_block(Dim3 block, const MoeCombineParams &p) {
  int64_t t = block.x;
  moeCombine(p.y, p.weights + t * p.topK, p.selectionRows + t * p.topK, p.topK,
             p.dim, p.out + t * p.dim);
}
KILN_KERNEL(kiln_moe_combine, MoeCombineParams)

// -- Hold: keeps its stream busy for `nanoseconds` (one thread sleeping on
// the global timer). The executor's kernel profile starts a step with it,
// so that the host has queued the step's launches, and the events between
// them, before the GPU reaches them: the events then time the kernels, not
// the host's pace. The host builds return at once.
struct HoldParams {
  long long nanoseconds;
};

KILN_FN void kiln_hold_block(Dim3, const HoldParams &p) {
#if defined(__CUDA_ARCH__)
  if (KILN_THREAD != 0)
    return;
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    __nanosleep(10000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < static_cast<unsigned long long>(p.nanoseconds));
#else
  (void)p;
#endif
}
KILN_KERNEL(kiln_hold, HoldParams)

KILN_KERNELS_END

#endif // KILN_KERNELS_LIBRARY_H
