//===- Passes.td - kiln pass definitions -------------------*- tablegen -*-===//
#ifndef KILN_PASSES_TD
#define KILN_PASSES_TD

include "mlir/Pass/PassBase.td"

def KilnSummarize : Pass<"kiln-summarize", "::mlir::ModuleOp"> {
  let summary = "Records the model's size and structure as a module attribute";
  let description = [{
    Counts what the module declares and computes, and attaches the totals
    as the `kiln.summary` dictionary on the module, so the numbers a
    deployer plans with (parameter bytes by element type, KV-cache bytes per
    token, layer and expert counts) are visible in the printed IR and
    checkable by lit tests:

    - `parameters`: total parameter elements; `parameter_bytes`: total bytes;
      `bytes.<type>`: bytes held in each element type (FP8 block scales
      count as f32);
    - `kv_cache_bytes_per_token`: the bytes every `kiln.kv_cache` slot holds
      per token, summed over slots (all layers);
    - `routed_experts`: the largest `num_experts` of any `kiln.moe_dispatch`.

    Each function gets `kiln.layers`: `attention` (`kiln.attention` ops),
    `moe` (`kiln.moe_gate` ops) and `dense_ffn` (token-level `kiln.swiglu`
    ops that are not a MoE layer's shared experts).
  }];
}

def KilnQuantizeFP8 : Pass<"kiln-quantize-fp8", "::mlir::ModuleOp"> {
  let summary = "Quantizes GEMM weights to e4m3 with 128x128 block scales";
  let description = [{
    DeepSeek-V3's FP8 recipe: the weight of every `kiln.linear`,
    `kiln.grouped_linear` and `kiln.head_linear` becomes e4m3 codes with one
    fp32 scale per `block` x `block` block (`s = amax / 448`, a power of two
    with `ue8m0`), both parameters derived from the original checkpoint
    tensor by `#kiln.fp8_quant`; the GEMMs then quantize their input
    activations per token per `block` channels and scale each K block's fp32
    partial sum by both scales (see `kiln.linear`).

    The policy keeps in higher precision what the recipe keeps: the
    embedding, the output head, the MoE router and the norms (they are not
    GEMM weights), and weights that a non-GEMM op also reads (tied
    embeddings). `keep-ops` keeps every GEMM of the given kinds, `keep`
    keeps parameters whose name or checkpoint name matches a glob pattern.
    MLA's `kv_b_proj` stays when its per-head rows do not start on block
    boundaries, so that absorption can still slice it. Weights that are FP8
    in the checkpoint stay as they are; with `checkpoint-only` (the default
    for native FP8 checkpoints) so do the ones it stores in higher
    precision.

    Every GEMM and every op kept by the policy gets `kiln.quant` (`"fp8"`,
    `"fp8: checkpoint"` or `"bf16: <reason>"`), and the module gets
    `kiln.fp8 = {block, ue8m0}`.
  }];
  let options = [
    Option<"block", "block", "int64_t", /*default=*/"128",
           "Block size of weight scales and activation groups">,
    Option<"ue8m0", "ue8m0", "bool", /*default=*/"false",
           "Power-of-two (UE8M0) scales for weights and activations">,
    Option<"checkpointOnly", "checkpoint-only", "bool", /*default=*/"false",
           "Quantize nothing the checkpoint stores in higher precision (a "
           "native FP8 checkpoint as shipped)">,
    ListOption<"keepOps", "keep-ops", "std::string",
               "GEMM kinds to keep: linear, grouped_linear, head_linear">,
    ListOption<"keep", "keep", "std::string",
               "Glob patterns of parameter names to keep">,
  ];
}

def KilnAbsorbLatentKV : Pass<"kiln-absorb-latent-kv", "::mlir::ModuleOp"> {
  let summary = "Caches MLA's latent and absorbs W_UK/W_UV into the attention";
  let description = [{
    Rewrites Multi-head Latent Attention from the naive form the builders
    emit (per-head K and V decompressed by `kv_b_proj` and cached) to forms
    whose KV cache holds, per token and layer, only the normalized latent
    `c_kv` and the roped `k_pe` (`kv_lora_rank + qk_rope_head_dim` values,
    no head dimension):

    - `absorbed`: `W_UK` is applied to the query (`q_lat_h = q_nope_h^T
      W_UK_h`), attention runs over the latent like MQA (keys `[c_kv|k_pe]`,
      values `c_kv`), and `W_UV` maps each head's output back. `W_UK` and
      `W_UV` become parameters derived from `kv_b_proj` by a
      `#kiln.head_slice` transform.
    - `naive_from_latent`: the cache stays latent, but attention decompresses
      every cached token's K and V with `kv_b_proj` (cheaper for long
      prefills, which share that work among many queries).

    `mode=naive` leaves the graph alone, `mode=absorbed` absorbs every entry
    point; `mode=auto` (default) asks a roofline cost model (FLOPs and bytes
    of both forms for the entry point's batch, query tokens and context)
    and, when prefill and decode choose differently, splits `@forward` into
    `@prefill` and `@decode`. The decision and the costs are recorded as a
    `kiln.mla` attribute on each entry function; rewritten attention ops
    carry `kiln.mla = "absorbed"` or `"naive_from_latent"`. Attention that
    is not MLA (GQA in Qwen2/Llama) is left alone, as is MLA with FP8
    `kv_b_proj` weights whose blocks straddle heads.

    `latent-cache-dtype=fp8` stores the latent slots as
    `#kiln.packed_cache<fp8_columns = kv_lora_rank>`: `c_kv` in e4m3 with
    one scale per 128 values, the RoPE key in bf16; `latent-cache-dtype=bf16`
    as `#kiln.packed_cache<fp8_columns = 0>`: every column in bf16.
  }];
  let options = [
    Option<"mode", "mode", "std::string", /*default=*/"\"auto\"",
           "auto, naive or absorbed">,
    Option<"batch", "batch", "int64_t", /*default=*/"8",
           "Sequences per step, for the cost model">,
    Option<"prefillTokens", "prefill-tokens", "int64_t", /*default=*/"512",
           "Tokens per sequence in a prefill step, for the cost model">,
    Option<"context", "context", "int64_t", /*default=*/"4096",
           "Cached positions per sequence, for the cost model">,
    Option<"latentCacheDtype", "latent-cache-dtype", "std::string",
           /*default=*/"\"f32\"", "f32, bf16 or fp8: how latent slots store their rows">,
  ];
}

def KilnFuseGatedLinear : Pass<"kiln-fuse-gated-linear", "::mlir::ModuleOp"> {
  let summary = "Merges a SwiGLU's gate and up projections into one GEMM";
  let description = [{
    Rewrites `kiln.swiglu(kiln.linear(%x, %wg), kiln.linear(%x, %wu))` into
    `kiln.gated_linear %x, %wg, %wu`, and the same of two
    `kiln.grouped_linear` ops over one input and one `expert_offsets` (a
    MoE layer's experts) into a grouped `kiln.gated_linear`. At decode a
    gated FFN's first half is then one launch instead of three: the GEMV
    reads each activation row once for both weights and writes only the
    activation, not the two projections; the runtime still runs the two
    GEMMs and the SwiGLU where a library GEMM (cuBLASLt, tensor cores)
    takes the rows. The weights stay two parameters, as the checkpoint
    stores them.

    Both projections must read the same input (and its `input_scale`),
    have no bias, equal weight types and FP8 blocks, and have no user but
    the SwiGLU, which must take the gate first. Anything else is left
    alone. Run before `kiln-fuse`, which would otherwise group the SwiGLU
    with its row-local neighbours.
  }];
}

def KilnFoldHeadSlices : Pass<"kiln-fold-head-slices", "::mlir::ModuleOp"> {
  let summary = "Reads a sliced head projection input through the GEMM's strides";
  let description = [{
    Rewrites `kiln.head_linear(kiln.slice %x [offset, size], %w)` into
    `kiln.head_linear %x, %w {input_offset = offset}`: the GEMM reads each
    head's columns `[offset, offset + size)` of `%x` in place, so the slice
    is no longer a kernel of its own. Absorbed MLA's decode slices each
    query head's no-RoPE part (128 of DeepSeek's 192 columns) for `W_UK`:
    one launch a layer, which a decode step at batch 1, a chain of short
    kernels, pays in latency. A slice other ops also read stays for them.
    FP8 head projections quantize their input rows whole and are left
    alone.
  }];
}

def KilnGroupLinears : Pass<"kiln-group-linears", "::mlir::ModuleOp"> {
  let summary = "Groups independent GEMMs into one launch";
  let description = [{
    Wraps GEMMs (`kiln.linear`, `kiln.grouped_linear`, `kiln.gated_linear`)
    that one kernel can run together in a `kiln.linear_group`, so that a
    decode step runs their GEMVs as one launch instead of one each: MLA's
    `q_proj` (or `q_a_proj`) with `kv_a_proj_with_mqa` and a dense
    attention's q, k and v, which read one input; a MoE layer's routed
    experts with its shared expert, first their gated GEMMs, then their
    down projections. At batch 1 a step is a chain of short kernels, each
    of which pays launch latency and a ramp-up; a small GEMV such as
    `kv_a_proj_with_mqa` (576 output rows) also keeps few loads in flight
    on its own.

    In program order, each GEMM not yet grouped takes the following GEMMs,
    up to 32 ops on, that need the same kernel (gatedness, weight and input
    element types, FP8 block; FP8 GEMMs of f32 activations each quantize
    their own rows in the grouped GEMV, so they group with FP8 GEMMs of
    e4m3 codes) and whose operands are all available at its place:
    defined before it, or `kiln.get_parameter`s, which move up. So no member
    reads another's result. Groups hold at most 4 GEMMs. A group makes its
    results available from its place on, so the pass runs in rounds until
    none forms (a MoE layer's down projections pair up in the second).
    Run after `kiln-fuse`, which has moved FP8 activation quantization into
    the producing kernel by then, so that FP8 siblings read the same codes.
  }];
}

def KilnFuse : Pass<"kiln-fuse", "::mlir::ModuleOp"> {
  let summary = "Groups chains of row-local ops into fused kernels";
  let description = [{
    Wraps chains of *row-local* ops in `kiln.fused` ops, one kernel each.
    A row is a vector along the last dimension: one token's hidden state,
    or one head of a token for `[batch, seq, heads, d]` values (or a cached
    position, or a routed row). Row-local ops compute a token's rows from
    the same token's rows plus whole weights: `kiln.embedding` (the
    token's row of the table), `kiln.rms_norm`, `kiln.add`
    (residuals), `kiln.swiglu`, `kiln.rope`, `kiln.slice`, `kiln.concat`,
    `kiln.broadcast`, `kiln.reshape` (it keeps the token dimensions),
    `kiln.moe_gate` (router GEMV, softmax/sigmoid and grouped top-k over
    one token's expert scores) and `kiln.moe_combine` (the weighted sum of
    the expert output rows a token's selections name: those rows are a
    whole group input, like a weight, and their producer never joins). A
    fused kernel gives each token (or row) to one CUDA block (one thread
    team on the CPU), which keeps what it computes in registers or shared
    memory, so those values never go through memory. Ops that need other
    tokens are boundaries: GEMMs (`linear`, `grouped_linear`,
    `head_linear`, `logits`) tile over many tokens against a weight,
    `attention` reads every cached position, the KV cache ops and
    `moe_dispatch` gather or permute tokens, and `get_parameter` stays
    outside (weights are group inputs).

    Greedy, per function, latest op first: an op not yet grouped seeds a
    group, which grows upwards: a producer of a member joins when

    1. the group's row width — the widest row of any value its members read
       or write (weights excluded), at 4 bytes per element since kernels
       compute in fp32 — stays within `row-bytes` (default 48 KiB, the
       shared memory a CUDA block gets without opting in). A norm or the
       router needs its whole row on chip before it can finish it; this
       bounds that, not what a kernel may stream through. DeepSeek-V3's
       7168-wide hidden rows take 28 KiB, its 576-wide query heads 2.3 KiB;
       and so does the group's scratch: the values of a token its members
       other than the seed compute (fp32, each in a 16-byte slot), which
       a kernel keeps on chip for the members after them. The bound is
       taken over all of them, though a kernel reuses a slot once its last
       reader has run. DeepSeek-V3's query RoPE so joins the concat after
       it (the RoPE's 128 heads x 64: 32 KiB) but not the slice before it
       too (another 32 KiB);
    2. every use outside the group comes after the group's last op. The
       fused op takes the last op's place, so nothing else moves (KV-cache
       reads and writes keep their order, which SSA does not show), and no
       cycle can form: an op that consumed a group value and fed the group
       would come before the last op. A value several groups read so joins
       the earliest of them;
    3. for a reshape: all its uses are in the group (a reshape is a view,
       outside users read its input for free).

    A producer with uses outside the group is computed once and also
    written (yielded) rather than recomputed in each consumer's kernel:
    writing costs one row per token, recomputing re-reads the producer's
    inputs in every other kernel (two rows for a residual add, a row and
    the weight for a norm), and the residual stream must be written for the
    next layer anyway. So a residual add joins the RMSNorm after it
    (`fused_add_rms_norm`) and the norm before a MoE router joins the
    router, both yielding their results too.

    A group becomes a `kiln.fused` op when it holds two ops that compute
    (reshapes are views) or when a result feeds an FP8 GEMM, whose
    activation quantization (per token, per 128 channels) then belongs to
    the kernel's epilogue. Each fused op is named `fused_<n>_<op kinds>`
    (unique in the module) and records `kiln.fusion = {kind = "row",
    row_bytes, saved_bytes, quantizes_for}`: `saved_bytes` is the memory
    traffic per token the group avoids — the write of every value only the
    group reads, and every read by a member of a value a member computed;
    `quantizes_for` lists the FP8 activation quantizations (`"fp8 1x128"`,
    `" ue8m0"` with power-of-two scales) of the GEMMs the results feed.

    With `horizontal` (the default) fused kernels then merge sideways: each
    `kiln.fused` op takes the next one in its block (within 32 ops) when
    their rows index the same tokens (some inputs of both trace back,
    through ops that keep token dimensions, to one value), the later reads
    nothing computed from the earlier, every op between them that the
    later needs is free of memory effects, and the two scratch rows fit
    `row-bytes` together. Those ops move up before the earlier kernel, and
    one kernel at its place runs both bodies for each token, yielding both
    kernels' results: the same work in one launch instead of two. MLA's
    latent-cache row (its norm and key RoPE) so joins the query's RoPE
    (`fused_<n>_..._and_slice_rope_concat`), the query's `W_UK` GEMM moving
    up. The merged op's `kiln.fusion` records `chains`, the kernels it
    holds; its `row_bytes` is theirs at most, its `saved_bytes` their sum.

    With `cache-epilogue` (the default) a fused kernel then also stores the
    rows a `kiln.kv_append` writes of one of its results (or of a view of
    one; an FP8 slot's rows quantized there), when the positions exist at
    the kernel and no op between the kernel and the append reads or writes
    the cache (the write moves up to the kernel).
    The append joins the body; a result only such appends read is no
    longer yielded (unless the kernel would have no result left, or the
    row would not fit `row-bytes`). `_kv_append` ends the kernel's name.
    The row goes to the cache from on chip: the append's launch goes, and
    its read of the row, and the row's write when no longer yielded (in
    `saved_bytes`). MLA's latent-cache row so goes straight to the cache
    from the kernel that normalizes it and rotates its key part.

    With `quantize-epilogue` (the default) the quantization then moves into
    the group: for each result an FP8 `kiln.linear` or dense
    `kiln.gated_linear` reads whole (f32), the body ends with a
    `kiln.quantize_fp8` per distinct `(block cols, ue8m0)` and yields its
    codes and scales, and those GEMMs take the quantized input
    (`input_scale`). A result only such linears read is no longer
    yielded: the kernel writes 1 byte per value (plus a scale per block)
    instead of 4, and the GEMM skips its quantization pass. Grouped and
    head GEMMs (whose inputs are gathered or sliced after the group) still
    quantize their own inputs.
  }];
  let options = [
    Option<"rowBytes", "row-bytes", "int64_t", /*default=*/"49152",
           "Bytes of on-chip memory one row of a fused kernel may take">,
    Option<"quantizeEpilogue", "quantize-epilogue", "bool",
           /*default=*/"true",
           "Quantize the inputs of FP8 linears in the producing group">,
    Option<"horizontal", "horizontal", "bool", /*default=*/"true",
           "Merge independent fused kernels of the same tokens into one">,
    Option<"cacheEpilogue", "cache-epilogue", "bool", /*default=*/"true",
           "Store KV-cache rows in the fused kernel that computes them">,
  ];
}

#endif // KILN_PASSES_TD
