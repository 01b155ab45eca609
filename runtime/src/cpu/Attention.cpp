// Causal attention over keys/values the step computed, one tile of query
// rows per work item (see AttentionTile.h). Tiles further along a sequence
// see more keys, so they are handed out dynamically.
#include "runtime/src/cpu/AttentionTile.h"
#include "runtime/src/cpu/Kernels.h"

namespace kiln::cpu {
namespace {

struct AttentionArgs {
  const float *q, *k, *v;
  const int32_t *positions, *kvLengths;
  int64_t seq, heads, dk, dv, kStride, vStride, kRow, vRow;
  float scale;
  float *out;
};

template <class V>
[[gnu::always_inline]] inline void attendImpl(const AttentionArgs &a,
                                              const tiled::Tiling::Item &it) {
  tiled::Tile t = tiled::makeTile(it, a.q, a.out, a.positions, a.kvLengths,
                                  a.seq, a.heads, a.dk, a.dv);
  const float *kb = a.k + it.b * a.kStride + it.kvh * a.dk;
  const float *vb = a.v + it.b * a.vStride + it.kvh * a.dv;
  tiled::attendTile<V>(
      t, a.dk, a.dv, a.scale,
      [&](int64_t j0, int64_t nb, const float **kRows, const float **vRows) {
        for (int64_t j = 0; j < nb; ++j) {
          kRows[j] = kb + (j0 + j) * a.kRow;
          vRows[j] = vb + (j0 + j) * a.vRow;
        }
      });
}

void attendGeneric(const AttentionArgs &a, const tiled::Tiling::Item &it) {
  attendImpl<tiled::VecPortable>(a, it);
}

// flatten: the tile's templates are not AVX2 functions themselves, so their
// vector operations are only inlined once the whole tree is inlined here.
__attribute__((target("avx2,fma"), flatten)) void
attendAvx2(const AttentionArgs &a, const tiled::Tiling::Item &it) {
  attendImpl<tiled::VecAvx2>(a, it);
}

} // namespace

void attention(const float *q, const float *k, const float *v,
               const int32_t *positions, const int32_t *kvLengths,
               int64_t batch, int64_t seq, int64_t heads, int64_t kvHeads,
               int64_t dk, int64_t dv, int64_t kBatchStride,
               int64_t vBatchStride, float scale, float *out,
               int64_t kRowStride, int64_t vRowStride) {
  AttentionArgs args{q,
                     k,
                     v,
                     positions,
                     kvLengths,
                     seq,
                     heads,
                     dk,
                     dv,
                     kBatchStride,
                     vBatchStride,
                     kRowStride ? kRowStride : kvHeads * dk,
                     vRowStride ? vRowStride : kvHeads * dv,
                     scale,
                     out};
  tiled::Tiling tiling(batch, seq, heads, kvHeads);
  auto attend = vectorKernelsActive() ? attendAvx2 : attendGeneric;
#pragma omp parallel for schedule(dynamic)
  for (int64_t i = 0; i < tiling.items; ++i)
    attend(args, tiling.item(i));
}

} // namespace kiln::cpu
