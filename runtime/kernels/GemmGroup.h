// Independent GEMMs run as one launch (kiln.linear_group): member i takes
// blocks [firstBlock[i], firstBlock[i + 1]) of the grid, its own grid (its
// column blocks x its matrices) flattened, and runs as its own launch would
// (a GEMV of Matmul.h or, where mma[i] is set, a tensor-core GEMM of
// MmaGemm.h), so each result is that launch's to the bit. The members share
// the weight type, the activation type and gatedness, and so the kernel.
//
// kiln_gemv_group_* take groups of GEMVs alone (a decode step of one token);
// kiln_gemm_group_* take bf16 groups with members on the tensor cores (from
// two rows a matrix), GEMV members beside them: a decode step of a few tokens
// runs MLA's q and latent projections, or a MoE layer's routed experts (a
// row or two each: GEMVs) and its shared expert (every token: the mma GEMM),
// as one launch instead of one per member. A block runs one member's code,
// so the barriers of the mma GEMM's block sum stay block-uniform.
#ifndef KILN_KERNELS_GEMM_GROUP_H
#define KILN_KERNELS_GEMM_GROUP_H

#include "MmaGemm.h"

KILN_KERNELS_BEGIN

constexpr int kGemmGroupMembers = 4;

struct GemmGroupParams {
  GemmParams member[kGemmGroupMembers];
  /// Nonzero: member i runs as kiln_gemm_mma_* (kiln_gemm_group_* only).
  int mma[kGemmGroupMembers];
  int columnBlocks[kGemmGroupMembers];
  int firstBlock[kGemmGroupMembers + 1];
  int members;
};
// A kernel's parameters take at most 4 KiB.
static_assert(sizeof(GemmGroupParams) <= 4096);

/// The grid of `p`'s members (set), after filling in their own grids'
/// widths and their first blocks. Grouped members span the matrices
/// gemmGridMatrices gives them.
inline Dim3 gemmGroupGrid(GemmGroupParams &p) {
  int blocks = 0;
  for (int i = 0; i < p.members; ++i) {
    const GemmParams &m = p.member[i];
    int64_t matrices = gemmGridMatrices(m, m.offsets ? m.experts : 1);
    Dim3 own = p.mma[i] ? mmaGemmGrid(m.n, matrices) : gemvGrid(m.n, matrices);
    p.columnBlocks[i] = own.x;
    p.firstBlock[i] = blocks;
    blocks += own.x * own.z;
  }
  p.firstBlock[p.members] = blocks;
  return {blocks, 1, 1};
}

/// The member whose blocks hold `block`, and the block of that member's own
/// grid it stands for.
KILN_FN int gemmGroupMember(Dim3 block, const GemmGroupParams &p, Dim3 &own) {
  int i = 0;
  while (i + 1 < p.members && block.x >= p.firstBlock[i + 1])
    ++i;
  int local = block.x - p.firstBlock[i];
  own = {local % p.columnBlocks[i], 1, local / p.columnBlocks[i]};
  return i;
}

template <class W, bool Fp8, class A = float, bool Gated = false>
KILN_FN void gemvGroupBlock(Dim3 block, const GemmGroupParams &p) {
  Dim3 own;
  int i = gemmGroupMember(block, p, own);
  gemvBlock<W, Fp8, A, Gated>(own, p.member[i]);
}

/// The weight rows gemvGroupBlock's and gemmGroupBlock's block reads.
template <class W>
KILN_FN void prefetchGroupBlock(Dim3 block, const GemmGroupParams &p) {
  Dim3 own;
  int i = gemmGroupMember(block, p, own);
  if (p.mma[i])
    prefetchMmaGemmBlock<W>(own, p.member[i]);
  else
    prefetchGemvBlock<W>(own, p.member[i]);
}

#define KILN_GEMV_GROUP_KERNEL(suffix, W, Fp8, A)                              \
  KILN_FN void kiln_gemv_group_##suffix##_block(Dim3 block,                    \
                                                const GemmGroupParams &p) {    \
    gemvGroupBlock<W, Fp8, A>(block, p);                                       \
  }                                                                            \
  KILN_KERNEL_PREFETCHING(kiln_gemv_group_##suffix, GemmGroupParams,           \
                          prefetchGroupBlock<W>)                               \
  KILN_FN void kiln_gemv_group_gated_##suffix##_block(                         \
      Dim3 block, const GemmGroupParams &p) {                                  \
    gemvGroupBlock<W, Fp8, A, true>(block, p);                                 \
  }                                                                            \
  KILN_KERNEL_PREFETCHING(kiln_gemv_group_gated_##suffix, GemmGroupParams,     \
                          prefetchGroupBlock<W>)
KILN_GEMV_GROUP_KERNEL(f32, float, false, float)
KILN_GEMV_GROUP_KERNEL(bf16, Bf16, false, float)
KILN_GEMV_GROUP_KERNEL(f16, F16, false, float)
KILN_GEMV_GROUP_KERNEL(f8e4m3, unsigned char, true, float)
KILN_GEMV_GROUP_KERNEL(f8e4m3_q8, unsigned char, true, unsigned char)
#undef KILN_GEMV_GROUP_KERNEL

/// FP8 members of f32 activations, each quantizing its own rows as
/// kiln_gemv_f8e4m3_qin: members of different inputs share a launch. A
/// member given e4m3 codes and their scales instead (x null) runs as
/// kiln_gemv_f8e4m3_q8, so the experts' routed rows and the shared
/// expert's codes (from the norm's kernel) share one.
template <bool Gated>
KILN_FN void gemvQuantizingGroupBlock(Dim3 block, const GemmGroupParams &p) {
  Dim3 own;
  int i = gemmGroupMember(block, p, own);
  if (p.member[i].x)
    gemvQuantizingBlock<Gated>(own, p.member[i]);
  else
    gemvBlock<unsigned char, true, unsigned char, Gated>(own, p.member[i]);
}
KILN_FN void kiln_gemv_group_f8e4m3_qin_block(Dim3 block,
                                              const GemmGroupParams &p) {
  gemvQuantizingGroupBlock<false>(block, p);
}
KILN_KERNEL_PREFETCHING(kiln_gemv_group_f8e4m3_qin, GemmGroupParams,
                        prefetchGroupBlock<unsigned char>)
KILN_FN void kiln_gemv_group_gated_f8e4m3_qin_block(Dim3 block,
                                                    const GemmGroupParams &p) {
  gemvQuantizingGroupBlock<true>(block, p);
}
KILN_KERNEL_PREFETCHING(kiln_gemv_group_gated_f8e4m3_qin, GemmGroupParams,
                        prefetchGroupBlock<unsigned char>)

/// Members on the tensor cores (mma[i]) beside GEMV members. A kernel of
/// its own, not a branch of the GEMV groups': it takes the mma GEMM's
/// registers, which would cost a decode step's GEMV groups occupancy. bf16
/// only: ptxas (sm_90a) fits the bf16 kernels in 104 and 168 registers
/// without spills, where the FP8 ones spilled 100 to 152 bytes.
template <class W, bool Fp8, class A, bool Gated>
KILN_FN void gemmGroupBlock(Dim3 block, const GemmGroupParams &p) {
  Dim3 own;
  int i = gemmGroupMember(block, p, own);
  if (p.mma[i])
    mmaGemmBlock<W, Fp8, A, Gated>(own, p.member[i]);
  else
    gemvBlock<W, Fp8, A, Gated>(own, p.member[i]);
}

#define KILN_GEMM_GROUP_KERNEL(suffix, W, Fp8, A)                              \
  KILN_FN void kiln_gemm_group_##suffix##_block(Dim3 block,                    \
                                                const GemmGroupParams &p) {    \
    gemmGroupBlock<W, Fp8, A, false>(block, p);                                \
  }                                                                            \
  KILN_KERNEL_PREFETCHING(kiln_gemm_group_##suffix, GemmGroupParams,           \
                          prefetchGroupBlock<W>)                               \
  KILN_FN void kiln_gemm_group_gated_##suffix##_block(                         \
      Dim3 block, const GemmGroupParams &p) {                                  \
    gemmGroupBlock<W, Fp8, A, true>(block, p);                                 \
  }                                                                            \
  KILN_KERNEL_PREFETCHING(kiln_gemm_group_gated_##suffix, GemmGroupParams,     \
                          prefetchGroupBlock<W>)
KILN_GEMM_GROUP_KERNEL(bf16, Bf16, false, float)
#undef KILN_GEMM_GROUP_KERNEL

KILN_KERNELS_END

#endif // KILN_KERNELS_GEMM_GROUP_H
