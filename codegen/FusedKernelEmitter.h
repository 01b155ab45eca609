//===- FusedKernelEmitter.h - kiln.fused -> portable C++ --------*- C++ -*-===//
//
// Emits a `kiln.fused` group as one C++ source that builds both as a CUDA
// kernel (one thread block per token) and as a host function (a loop over
// tokens) on top of runtime/kernels/FusedPrelude.h, so that the host build
// runs the very body the GPU runs.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_CODEGEN_FUSEDKERNELEMITTER_H
#define KILN_CODEGEN_FUSEDKERNELEMITTER_H

#include "ir/KilnOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "runtime/src/cpu/Kernels.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::codegen {

/// The element types a fused kernel argument may have.
enum class KernelElement { F32, BF16, F16, I32, F8E4M3 };

/// What a fused kernel argument is. The arguments are the group's inputs in
/// order, then a (CacheRows, CacheSlot) pair per `kiln.kv_append` of the
/// body in order, then the group's results.
enum class ArgRole {
  Input,
  /// [tokens] i32: the row of the cache slot each token's entry goes to
  /// (the block table applied to its position), -1 for none.
  CacheRows,
  /// The rows of a cache slot, written at CacheRows: f32, or an FP8 slot's
  /// bytes (e4m3 codes, scales and a bf16 tail, as KVCacheOp lays them out).
  CacheSlot,
  Result,
};

struct KernelArg {
  ArgRole role = ArgRole::Input;
  /// Per-token tensors have leading dynamic dimensions ([B, S], [B, KvLen]
  /// or routed rows [R]) that the kernel flattens to its token index;
  /// whole tensors (weights) are read entirely by every token.
  bool perToken = false;
  /// A whole input whose rows the kernel reads by index (kiln.moe_combine's
  /// expert outputs, [routed rows, d]): as many rows as the step routed.
  bool indexedRows = false;
  KernelElement element = KernelElement::F32;
  /// Elements per token (per-token), per row (indexed rows) or in all
  /// (whole).
  int64_t elements = 0;
  /// The checkpoint parameter a whole input reads, when it is one; the slot
  /// a cache argument names.
  std::string parameter;
};

struct FusedKernel {
  /// The group's name: the CUDA kernel's, and the stem of the host entry.
  std::string name;
  /// `extern "C" void <name>_host(int64_t tokens, void **args)`, args in
  /// the order of `args`.
  std::string hostEntry;
  /// `extern "C" __global__ void <name>(int64_t tokens, <args>...)`, one
  /// block of blockThreads threads per token (a grid smaller than `tokens`
  /// strides over them).
  std::string cudaEntry;
  /// kFusedBlockThreads, or for a group with a router (kiln.moe_gate) a
  /// warp per kRouterExpertsPerWarp experts, up to kRouterMaxThreads: the
  /// router's logits are the one read of a whole weight matrix in a fused
  /// kernel, all by the token's block, so its time is the round trips of
  /// its warps.
  uint32_t blockThreads = 0;
  std::vector<KernelArg> args;
  /// Floats of the per-token scratch row (shared memory on the GPU).
  int64_t scratchFloats = 0;
  /// The C++ source; it includes kFusedPreludeName.
  std::string source;
};

/// Threads per block of the CUDA kernels (the prelude's
/// KILN_BLOCK_THREADS).
inline constexpr uint32_t kFusedBlockThreads = 128;
/// Experts a router warp scores at a time (the prelude's moeGateN).
inline constexpr int64_t kRouterExpertsPerWarp = 8;
/// The most threads of a router group's block. With 512, ptxas spills in
/// DeepSeek-V3's router kernel (256 experts x 7168); with 256 it does not.
inline constexpr uint32_t kRouterMaxThreads = 256;

/// The prelude the sources include, by the name they include it with.
inline constexpr const char *kFusedPreludeName = "FusedPrelude.h";
/// The text of runtime/kernels/FusedPrelude.h, built into the compiler.
const std::string &fusedPreludeSource();

/// Emits `fused`. Fails (with an error on the op) for what the generated
/// kernels do not support: bf16 activations, FP8 weights, broadcasts of
/// more than one dimension, a moe_gate whose indices stay in the group,
/// intermediates beyond 48 KiB per token.
mlir::FailureOr<FusedKernel> emitFusedKernel(mlir::kiln::FusedOp fused);

/// The `kiln.fused` groups the plan executes, in order: those of @prefill
/// and @decode, or of @forward when no pass split it.
llvm::SmallVector<mlir::kiln::FusedOp> entryFusedGroups(mlir::ModuleOp module);

/// `#kiln.rope` as the CPU kernels take it.
::kiln::cpu::RopeParams ropeParams(mlir::kiln::RopeAttr rope);

} // namespace kiln::codegen

#endif // KILN_CODEGEN_FUSEDKERNELEMITTER_H
