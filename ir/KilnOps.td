//===- KilnOps.td - kiln operations ------------------------*- tablegen -*-===//
#ifndef KILN_OPS_TD
#define KILN_OPS_TD

include "ir/KilnDialect.td"
include "ir/KilnAttrs.td"
include "mlir/IR/SymbolInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

//===----------------------------------------------------------------------===//
// Type constraints
//===----------------------------------------------------------------------===//

def Kiln_Activation : RankedTensorOf<[F32, BF16]>;
def Kiln_Weight : RankedTensorOf<[F32, F16, BF16, F8E4M3FN]>;
def Kiln_IndexTensor : RankedTensorOf<[I32]>;
def Kiln_F32Tensor : RankedTensorOf<[F32]>;
def Kiln_Fp8Tensor : RankedTensorOf<[F8E4M3FN]>;
// A GEMM input: activations, or activations already quantized to e4m3.
def Kiln_GemmInput : RankedTensorOf<[F32, BF16, F8E4M3FN]>;

def Kiln_KVCacheResource : Resource<"::mlir::kiln::KVCacheResource">;

//===----------------------------------------------------------------------===//
// Parameters
//===----------------------------------------------------------------------===//

def Kiln_ParameterOp : Kiln_Op<"parameter", [Symbol]> {
  let summary = "Declares a named model weight";
  let description = [{
    A module-level weight tensor with a static shape. The symbol name is the
    Hugging Face tensor name unless `source` says otherwise. A `source`
    containing `{}` declares a stacked parameter: its leading dimension `E`
    gathers the `E` checkpoint tensors obtained by replacing `{}` with
    `0 .. E-1` (the routed experts of a MoE layer). `quantize` derives e4m3
    codes or their block scales from a higher-precision source (see
    `#kiln.fp8_quant`); a `transform` then derives the parameter from that
    (see `#kiln.head_slice`).

    Example:
    ```mlir
    kiln.parameter @model.norm.weight : tensor<7168xbf16>
    kiln.parameter @model.layers.3.mlp.experts.gate_proj.weight
        : tensor<256x2048x7168xf8E4M3FN>
        {source = "model.layers.3.mlp.experts.{}.gate_proj.weight"}
    ```
  }];
  let arguments = (ins SymbolNameAttr:$sym_name,
                       TypeAttrOf<Kiln_Weight>:$type,
                       OptionalAttr<StrAttr>:$source,
                       OptionalAttr<Kiln_Fp8QuantAttr>:$quantize,
                       OptionalAttr<Kiln_HeadSliceAttr>:$transform);
  let assemblyFormat = "$sym_name `:` $type attr-dict";
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    ::mlir::RankedTensorType getTensorType() {
      return ::llvm::cast<::mlir::RankedTensorType>(getType());
    }
    /// The checkpoint tensor name (or pattern, when stacked).
    ::llvm::StringRef getSourceName() {
      return getSource() ? *getSource() : getSymName();
    }
    /// True when the parameter stacks one checkpoint tensor per expert.
    bool isStacked() { return getSourceName().contains("{}"); }
  }];
}

def Kiln_GetParameterOp : Kiln_Op<"get_parameter",
    [Pure, DeclareOpInterfaceMethods<SymbolUserOpInterface>]> {
  let summary = "Reads a `kiln.parameter` as a tensor value";
  let description = [{
    Produces the value of the named parameter. The result type must equal the
    parameter's declared type.

    ```mlir
    %w = kiln.get_parameter @model.norm.weight : tensor<7168xbf16>
    ```
  }];
  let arguments = (ins FlatSymbolRefAttr:$name);
  let results = (outs Kiln_Weight:$result);
  let assemblyFormat = "$name attr-dict `:` type($result)";
}

//===----------------------------------------------------------------------===//
// KV cache
//===----------------------------------------------------------------------===//

def Kiln_KVCacheOp : Kiln_Op<"kv_cache", [Symbol]> {
  let summary = "Declares one tensor the KV cache holds per token";
  let description = [{
    A module-level cache slot: for every sequence and every token position it
    holds one tensor of `entry_type` (static shape, no batch or sequence
    dimension). What a layer caches is therefore visible in the IR, and a
    pass can replace the slots (e.g. per-head K and V by the MLA latent).

    ```mlir
    kiln.kv_cache @model.layers.0.self_attn.k : tensor<8x128xf32>
    ```

    `storage` stores entries in a narrower form than `entry_type` (see
    `#kiln.packed_cache`); reads still produce `entry_type` values.
  }];
  let arguments = (ins SymbolNameAttr:$sym_name,
                       TypeAttrOf<AnyRankedTensor>:$entry_type,
                       OptionalAttr<Kiln_PackedCacheAttr>:$storage);
  let assemblyFormat = "$sym_name `:` $entry_type attr-dict";
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    ::mlir::RankedTensorType getEntryTensorType() {
      return ::llvm::cast<::mlir::RankedTensorType>(getEntryType());
    }
    /// Bytes one token's entry takes as stored (see `storage`).
    int64_t getStoredBytesPerToken();
  }];
}

def Kiln_KVAppendOp : Kiln_Op<"kv_append", [
    DeclareOpInterfaceMethods<SymbolUserOpInterface>,
    MemoryEffects<[MemWrite<Kiln_KVCacheResource>]>]> {
  let summary = "Writes new tokens into a KV-cache slot";
  let description = [{
    `value` is `[batch, seq, entry...]`; row `(b, s)` is stored in sequence
    `b` of the cache at position `positions[b, s]`.

    ```mlir
    kiln.kv_append @model.layers.0.self_attn.k, %k at %pos
        : tensor<?x?x8x128xf32>, tensor<?x?xi32>
    ```
  }];
  let arguments = (ins FlatSymbolRefAttr:$cache, Kiln_Activation:$value,
                       Kiln_IndexTensor:$positions);
  let assemblyFormat = [{
    $cache `,` $value `at` $positions attr-dict `:` type($value) `,`
    type($positions)
  }];
  let hasVerifier = 1;
}

def Kiln_KVReadOp : Kiln_Op<"kv_read", [
    DeclareOpInterfaceMethods<SymbolUserOpInterface>,
    MemoryEffects<[MemRead<Kiln_KVCacheResource>]>]> {
  let summary = "Reads every cached token of a KV-cache slot";
  let description = [{
    Returns `[batch, kv_len, entry...]`: for sequence `b` the first
    `lengths[b]` positions are valid; the rest are masked by the consumer
    (`kiln.attention` takes the same `lengths`). With `columns = [offset,
    size]` only that range of the entry's last dimension is read (a view:
    absorbed MLA reads the latent `c_kv` as values out of the
    `[c_kv | k_pe]` entry its keys use).

    ```mlir
    %k = kiln.kv_read @model.layers.0.self_attn.k, %lens
        : tensor<?xi32> -> tensor<?x?x8x128xf32>
    ```
  }];
  let arguments = (ins FlatSymbolRefAttr:$cache, Kiln_IndexTensor:$lengths,
                       OptionalAttr<DenseI64ArrayAttr>:$columns);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $cache `,` $lengths attr-dict `:` type($lengths) `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Dense compute
//===----------------------------------------------------------------------===//

def Kiln_EmbeddingOp : Kiln_Op<"embedding", [Pure]> {
  let summary = "Looks up token embeddings";
  let description = [{
    `result[b, s, :] = table[tokens[b, s], :]`, converted to the activation
    element type.

    ```mlir
    %h = kiln.embedding %tokens, %table
        : (tensor<?x?xi32>, tensor<1024x64xbf16>) -> tensor<?x?x64xf32>
    ```
  }];
  let arguments = (ins Kiln_IndexTensor:$tokens, Kiln_Weight:$table);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $tokens `,` $table attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_RMSNormOp : Kiln_Op<"rms_norm", [Pure]> {
  let summary = "Root-mean-square normalization over the last dimension";
  let description = [{
    `y = x / sqrt(mean(x^2, -1) + epsilon) * weight`, computed in fp32.

    ```mlir
    %y = kiln.rms_norm %x, %w {epsilon = 1.0e-06 : f64}
        : (tensor<?x?x64xf32>, tensor<64xbf16>) -> tensor<?x?x64xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$input, Kiln_Weight:$weight,
                       F64Attr:$epsilon);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_LinearOp : Kiln_Op<"linear", [Pure, AttrSizedOperandSegments]> {
  let summary = "Affine projection by a weight matrix: `y = x W^T + b`";
  let description = [{
    `weight` is `[out, in]` (the Hugging Face `nn.Linear` layout) and applies
    to the last dimension of `input`; accumulation is fp32. An `f8E4M3FN`
    weight needs `scale`, one fp32 per `block_size = [rows, cols]` block of
    the weight (DeepSeek's `weight_scale_inv`): `W = q * scale`. FP8
    weights quantize the input per token per `cols` channels to e4m3 (`s =
    max(amax, 1e-4) / 448`, a power of two with `act_ue8m0`), and every
    `cols`-wide block of the fp32 dot product is scaled by both scales.

    ```mlir
    %y = kiln.linear %x, %w bias %b
        : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96xbf16>)
        -> tensor<?x?x96xf32>
    ```
  }];
  let arguments = (ins Kiln_GemmInput:$input, Kiln_Weight:$weight,
                       Optional<Kiln_Weight>:$bias,
                       Optional<Kiln_F32Tensor>:$weight_scale,
                       Optional<Kiln_F32Tensor>:$input_scale,
                       OptionalAttr<DenseI64ArrayAttr>:$block_size,
                       UnitAttr:$act_ue8m0);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $input `,` $weight (`bias` $bias^)? (`scale` $weight_scale^)?
    (`input_scale` $input_scale^)? attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_QuantizeFp8Op : Kiln_Op<"quantize_fp8", [Pure]> {
  let summary = "FP8 activation quantization per token per block of channels";
  let description = [{
    DeepSeek-V3's activation quantization, as `kiln.linear` applies it to
    the input of an FP8 GEMM: the last dimension in blocks of `block_cols`
    channels, each with `s = max(amax, 1e-4) / 448` (rounded up to a power
    of two with `ue8m0`) and codes `e4m3(x / s)`; `scales` has one entry
    per block. Row-local, so `kiln-fuse` puts it in the epilogue of the
    kernel that computes `input`, which then writes one byte per value
    instead of four and spares the GEMM its own quantization pass.

    ```mlir
    %q, %s = kiln.quantize_fp8 %x {block_cols = 128 : i64}
        : (tensor<?x?x256xf32>) -> (tensor<?x?x256xf8E4M3FN>, tensor<?x?x2xf32>)
    ```
  }];
  let arguments = (ins Kiln_Activation:$input, I64Attr:$block_cols,
                       UnitAttr:$ue8m0);
  let results = (outs Kiln_Fp8Tensor:$codes, Kiln_F32Tensor:$scales);
  let assemblyFormat = [{
    $input attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_HeadLinearOp : Kiln_Op<"head_linear", [Pure]> {
  let summary = "Per-head projection: `y[..., h, :] = x[..., h, :] W_h^T`";
  let description = [{
    `weight` stacks one `[out, in]` matrix per head: `[heads, out, in]`;
    `input` is `[..., heads, in]`, or with `input_offset` `[..., heads,
    width]` of which each head's columns `[input_offset, input_offset +
    in)` are read (a `kiln.slice` folded into the GEMM's strides by
    `kiln-fold-head-slices`). An `f8E4M3FN` weight needs `scale`
    `[heads, ceil(out/rows), ceil(in/cols)]` with `block_size` and quantizes
    its input as `kiln.linear` does. Absorbed MLA uses it to map per-head
    queries into the latent space (`W_UK`) and attention outputs back out of
    it (`W_UV`).

    ```mlir
    %y = kiln.head_linear %x, %w
        : (tensor<?x?x4x16xf32>, tensor<4x32x16xf32>) -> tensor<?x?x4x32xf32>
    %z = kiln.head_linear %q, %w {input_offset = 8 : i64}
        : (tensor<?x?x4x24xf32>, tensor<4x32x16xf32>) -> tensor<?x?x4x32xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$input, Kiln_Weight:$weight,
                       Optional<Kiln_F32Tensor>:$weight_scale,
                       OptionalAttr<DenseI64ArrayAttr>:$block_size,
                       UnitAttr:$act_ue8m0,
                       OptionalAttr<I64Attr>:$input_offset);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $input `,` $weight (`scale` $weight_scale^)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_LogitsOp : Kiln_Op<"logits", [Pure]> {
  let summary = "Output-head projection to fp32 vocabulary logits";
  let description = [{
    `logits = h W^T` with `W` the `[vocab, hidden]` output head; the result
    is always fp32. A separate op from `kiln.linear` so that passes can
    treat the head specially (kept in bf16 by quantization, computed only
    for the positions that are sampled).

    ```mlir
    %l = kiln.logits %h, %w
        : (tensor<?x?x64xf32>, tensor<1024x64xbf16>) -> tensor<?x?x1024xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$input, Kiln_Weight:$weight);
  let results = (outs Kiln_F32Tensor:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_AddOp : Kiln_Op<"add", [Pure, Commutative,
                                 SameOperandsAndResultType]> {
  let summary = "Elementwise sum (residual connections)";
  let description = [{
    ```mlir
    %y = kiln.add %a, %b : tensor<?x?x64xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$lhs, Kiln_Activation:$rhs);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def Kiln_SwiGLUOp : Kiln_Op<"swiglu", [Pure, SameOperandsAndResultType]> {
  let summary = "SwiGLU activation: `silu(gate) * up`";
  let description = [{
    ```mlir
    %y = kiln.swiglu %gate, %up : tensor<?x?x128xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$gate, Kiln_Activation:$up);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = "$gate `,` $up attr-dict `:` type($result)";
}

//===----------------------------------------------------------------------===//
// Shape ops
//===----------------------------------------------------------------------===//

def Kiln_ReshapeOp : Kiln_Op<"reshape", [Pure]> {
  let summary = "Regroups the static trailing dimensions";
  let description = [{
    Keeps the dynamic leading dimensions (batch, sequence) and regroups the
    static trailing ones, e.g. splitting the hidden dimension into heads.
    The element type and the product of the static dimensions are preserved.

    ```mlir
    %q = kiln.reshape %x : tensor<?x?x512xf32> -> tensor<?x?x4x128xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$input);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Kiln_SliceOp : Kiln_Op<"slice", [Pure]> {
  let summary = "Takes a contiguous range of the last dimension";
  let description = [{
    `result[..., i] = input[..., offset + i]` for `i < size`.

    ```mlir
    %nope = kiln.slice %q [0, 128] : tensor<?x?x4x192xf32> -> tensor<?x?x4x128xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$input, I64Attr:$offset,
                       I64Attr:$size);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $input `[` $offset `,` $size `]` attr-dict `:` type($input) `->`
    type($result)
  }];
  let hasVerifier = 1;
}

def Kiln_ConcatOp : Kiln_Op<"concat", [Pure]> {
  let summary = "Concatenates along the last dimension";
  let description = [{
    All inputs have the same element type and the same dimensions but the
    last.

    ```mlir
    %q = kiln.concat %nope, %pe
        : tensor<?x?x4x128xf32>, tensor<?x?x4x64xf32> -> tensor<?x?x4x192xf32>
    ```
  }];
  let arguments = (ins Variadic<Kiln_Activation>:$inputs);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = "$inputs attr-dict `:` type($inputs) `->` type($result)";
  let hasVerifier = 1;
}

def Kiln_BroadcastOp : Kiln_Op<"broadcast", [Pure]> {
  let summary = "Repeats size-1 static dimensions";
  let description = [{
    Each static dimension of size 1 in `input` may become any size in the
    result; all other dimensions are unchanged. Used to share MLA's single
    rope key across heads.

    ```mlir
    %k = kiln.broadcast %kpe : tensor<?x?x1x64xf32> -> tensor<?x?x4x64xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$input);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

def Kiln_RopeOp : Kiln_Op<"rope", [Pure]> {
  let summary = "Rotary position embedding of the last dimension";
  let description = [{
    Rotates pairs of the last dimension of `input` (`[batch, seq, ...,
    rotary_dim]`) by angles `positions[b, s] * inv_freq[i]`, with the
    frequency scheme and pairing given by `rope` (see `#kiln.rope`).

    ```mlir
    %q = kiln.rope %q, %pos {rope = #kiln.rope<kind = plain, theta = 10000.0>}
        : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
    ```

    `rope` lives in the attribute dictionary: written between the operands
    and the `:`, a `#kiln.rope<...>` would read `%pos#...` as a result number
    and take the trailing `: type` as its own type.
  }];
  let arguments = (ins Kiln_Activation:$input, Kiln_IndexTensor:$positions,
                       Kiln_RopeAttr:$rope);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $input `,` $positions attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_AttentionOp : Kiln_Op<"attention", [Pure]> {
  let summary = "Causal scaled-dot-product attention over cached keys/values";
  let description = [{
    `query` is `[batch, seq, heads, d_k]`, `key` `[batch, kv_len, kv_heads,
    d_k]`, `value` `[batch, kv_len, kv_heads, d_v]`; `heads` is a multiple of
    `kv_heads` (grouped-query attention; `kv_heads = 1` is MQA). Query
    `(b, s)` at position `positions[b, s]` attends to key `j` when
    `j <= positions[b, s]` and `j < kv_lengths[b]`; scores are multiplied by
    `scale` before the softmax, which is computed in fp32. Result:
    `[batch, seq, heads, d_v]`.

    ```mlir
    %o = kiln.attention %q, %k, %v, %pos, %lens {scale = 0.125 : f64}
        : (tensor<?x?x4x64xf32>, tensor<?x?x2x64xf32>, tensor<?x?x2x64xf32>,
           tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$query, Kiln_Activation:$key,
                       Kiln_Activation:$value, Kiln_IndexTensor:$positions,
                       Kiln_IndexTensor:$kv_lengths, F64Attr:$scale);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $query `,` $key `,` $value `,` $positions `,` $kv_lengths attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Mixture of experts
//===----------------------------------------------------------------------===//

def Kiln_MoEGateOp : Kiln_Op<"moe_gate", [Pure]> {
  let summary = "DeepSeekMoE router: scores, expert selection, weights";
  let description = [{
    Computes router logits `x W^T` (`weight` is `[experts, hidden]`) and
    scores in fp32 with `scoring_func` (`softmax` or `sigmoid`), then selects
    `top_k` experts per token with `topk_method`:

    - `greedy`: top-k of the scores.
    - `group_limited_greedy`: experts form `n_group` groups; a group scores
      the max of its experts; keep the best `topk_group` groups, then top-k
      within them.
    - `noaux_tc`: selection uses `scores + correction_bias`
      (`e_score_correction_bias`); a group scores the sum of its two best
      biased scores; keep `topk_group` groups; top-k within them. Weights
      come from the unbiased scores.

    Weights are renormalized to sum 1 when `norm_topk_prob` is set, then
    multiplied by `routed_scaling_factor`. Results: `weights`
    `[batch, seq, top_k]` f32 and `indices` `[batch, seq, top_k]` i32.

    ```mlir
    %w, %i = kiln.moe_gate %x, %gw bias %b sigmoid noaux_tc
        {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64,
         norm_topk_prob, routed_scaling_factor = 2.5 : f64}
        : (tensor<?x?x64xf32>, tensor<8x64xf32>, tensor<8xf32>)
        -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
    ```
  }];
  let arguments = (ins Kiln_Activation:$input, Kiln_Weight:$weight,
                       Optional<Kiln_Weight>:$correction_bias,
                       Kiln_ScoringFuncAttr:$scoring_func,
                       Kiln_TopkMethodAttr:$topk_method,
                       I64Attr:$top_k, I64Attr:$n_group, I64Attr:$topk_group,
                       UnitAttr:$norm_topk_prob,
                       F64Attr:$routed_scaling_factor);
  let results = (outs Kiln_F32Tensor:$weights, Kiln_IndexTensor:$indices);
  let assemblyFormat = [{
    $input `,` $weight (`bias` $correction_bias^)? $scoring_func $topk_method
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_MoEDispatchOp : Kiln_Op<"moe_dispatch", [Pure]> {
  let summary = "Groups token copies by their selected expert";
  let description = [{
    For `indices` `[batch, seq, top_k]`, produces `routed` `[n, hidden]`
    (`n = batch * seq * top_k`): one copy of each token row per selected
    expert, ordered by expert; `expert_offsets` `[num_experts + 1]`, where
    expert `e` owns rows `[offsets[e], offsets[e+1])`; `slots` `[n]`: for
    each routed row, the flat index `(b * seq + s) * top_k + k` of the
    selection it came from; and `selection_rows` `[batch, seq, top_k]`,
    its inverse: the routed row that holds each selection's copy, which
    `kiln.moe_combine` reads token by token (so that a fused kernel can
    combine a token's expert outputs).

    ```mlir
    %r, %off, %slots, %rows = kiln.moe_dispatch %x, %i {num_experts = 8 : i64}
        : (tensor<?x?x64xf32>, tensor<?x?x2xi32>)
        -> (tensor<?x64xf32>, tensor<9xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
    ```
  }];
  let arguments = (ins Kiln_Activation:$input, Kiln_IndexTensor:$indices,
                       I64Attr:$num_experts);
  let results = (outs Kiln_Activation:$routed,
                      Kiln_IndexTensor:$expert_offsets,
                      Kiln_IndexTensor:$slots,
                      Kiln_IndexTensor:$selection_rows);
  let assemblyFormat = [{
    $input `,` $indices attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_GroupedLinearOp : Kiln_Op<"grouped_linear", [Pure]> {
  let summary = "Per-expert projection of rows grouped by expert";
  let description = [{
    `weight` stacks one `[out, in]` matrix per expert: `[experts, out, in]`.
    Rows `[expert_offsets[e], expert_offsets[e+1])` of `input` are multiplied
    by expert `e`'s matrix. An `f8E4M3FN` weight needs `scale`
    `[experts, ceil(out/rows), ceil(in/cols)]` with `block_size`.

    ```mlir
    %y = kiln.grouped_linear %r, %w, %off
        : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<9xi32>)
        -> tensor<?x32xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$input, Kiln_Weight:$weight,
                       Kiln_IndexTensor:$expert_offsets,
                       Optional<Kiln_F32Tensor>:$weight_scale,
                       OptionalAttr<DenseI64ArrayAttr>:$block_size,
                       UnitAttr:$act_ue8m0);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $input `,` $weight `,` $expert_offsets (`scale` $weight_scale^)? attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_GatedLinearOp
    : Kiln_Op<"gated_linear", [Pure, AttrSizedOperandSegments]> {
  let summary = "SwiGLU of two projections of one input: `silu(x Wg^T) * (x Wu^T)`";
  let description = [{
    A gated feed-forward's first half as one GEMM: `kiln.swiglu` of
    `kiln.linear %x, %gate_weight` and `kiln.linear %x, %up_weight`
    (`kiln-fuse-gated-linear` forms it), so that a kernel reads the input
    once for both weights and writes only the activation. Without
    `expert_offsets` the weights are `[out, in]` and apply to the last
    dimension of `input`, as `kiln.linear`; with them they are
    `[experts, out, in]` over rows grouped by expert, as
    `kiln.grouped_linear`. `f8E4M3FN` weights need `gate_scale` and
    `up_scale` with one `block_size`; an `f8E4M3FN` input (codes a fused
    kernel quantized) needs `input_scale`, as `kiln.linear`'s, and gives
    an f32 result. Both projections accumulate in fp32 as their
    `kiln.linear` would, so the result is the unfused ops' to the bit.

    ```mlir
    %h = kiln.gated_linear %x, %wg, %wu
        : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96x64xbf16>)
        -> tensor<?x?x96xf32>
    %r = kiln.gated_linear %rows, %eg, %eu experts %offsets
        : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<8x32x64xbf16>,
           tensor<9xi32>) -> tensor<?x32xf32>
    ```
  }];
  let arguments = (ins Kiln_GemmInput:$input, Kiln_Weight:$gate_weight,
                       Kiln_Weight:$up_weight,
                       Optional<Kiln_IndexTensor>:$expert_offsets,
                       Optional<Kiln_F32Tensor>:$gate_scale,
                       Optional<Kiln_F32Tensor>:$up_scale,
                       Optional<Kiln_F32Tensor>:$input_scale,
                       OptionalAttr<DenseI64ArrayAttr>:$block_size,
                       UnitAttr:$act_ue8m0);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $input `,` $gate_weight `,` $up_weight
    (`experts` $expert_offsets^)? (`scales` $gate_scale^ `,` $up_scale)?
    (`input_scale` $input_scale^)? attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_MoECombineOp : Kiln_Op<"moe_combine", [Pure]> {
  let summary = "Weighted sum of expert outputs back into token order";
  let description = [{
    `result[b, s] = sum_k weights[b, s, k] * expert_outputs[selection_rows[b,
    s, k]]`, summed in `k` order; `selection_rows` is `kiln.moe_dispatch`'s.
    A token's result reads only that token's weights and rows, so
    `kiln-fuse` may put the combine in the kernel of the ops that follow
    (the residual add and the next norm).

    ```mlir
    %y = kiln.moe_combine %out, %w, %rows
        : (tensor<?x64xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi32>)
        -> tensor<?x?x64xf32>
    ```
  }];
  let arguments = (ins Kiln_Activation:$expert_outputs,
                       Kiln_F32Tensor:$weights,
                       Kiln_IndexTensor:$selection_rows);
  let results = (outs Kiln_Activation:$result);
  let assemblyFormat = [{
    $expert_outputs `,` $weights `,` $selection_rows attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Fusion
//===----------------------------------------------------------------------===//

def Kiln_FusedOp : Kiln_Op<"fused", [RecursiveMemoryEffects,
    RecursivelySpeculatable, IsolatedFromAbove, SingleBlock]> {
  let summary = "A group of row-local ops that runs as one kernel";
  let description = [{
    The ops of the body run as one kernel launch: a block of threads owns
    one token (or one row of it) at a time and keeps the values the body
    computes for it in registers or shared memory; only `inputs` are read
    from memory and only the values `kiln.yield` returns (and the cache
    rows a `kiln.kv_append` in the body stores) are written. The entry
    block's arguments stand for `inputs` in order. Only row-local ops may
    appear in the body (`kiln.embedding`, `kiln.rms_norm`, `kiln.add`,
    `kiln.swiglu`, `kiln.rope`, `kiln.slice`, `kiln.concat`,
    `kiln.broadcast`, `kiln.reshape`, `kiln.moe_gate`, `kiln.moe_combine`,
    `kiln.quantize_fp8`, `kiln.kv_append`): a token's results depend only
    on the same token of the operands, plus whole weights and the expert
    output rows its own `kiln.moe_combine` selections name. `name` names
    the kernel; `kiln-fuse` records why it formed the group in
    `kiln.fusion`. The op has the memory effects of its body: none, or a
    cache write.

    ```mlir
    %h, %n = kiln.fused "fused_0_add_rms_norm"(%x, %y, %w)
        : (tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<64xbf16>)
        -> (tensor<?x?x64xf32>, tensor<?x?x64xf32>) {
    ^bb0(%a: tensor<?x?x64xf32>, %b: tensor<?x?x64xf32>, %g: tensor<64xbf16>):
      %s = kiln.add %a, %b : tensor<?x?x64xf32>
      %r = kiln.rms_norm %s, %g {epsilon = 1.0e-06 : f64}
          : (tensor<?x?x64xf32>, tensor<64xbf16>) -> tensor<?x?x64xf32>
      kiln.yield %s, %r : tensor<?x?x64xf32>, tensor<?x?x64xf32>
    }
    ```
  }];
  let arguments = (ins StrAttr:$name, Variadic<AnyRankedTensor>:$inputs);
  let results = (outs Variadic<AnyRankedTensor>:$results);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = [{
    $name `(` $inputs `)` `:` functional-type($inputs, $results)
    attr-dict-with-keyword $body
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// True for the ops a fused body may hold: ops whose result rows depend
    /// only on the same rows of their operands (and on rows those name),
    /// and `kiln.kv_append`, which stores a row of the token it is given.
    static bool canContain(::mlir::Operation *op);
    /// True for an operand a body op reads whole, by the row indices of
    /// other operands, not row by row: `kiln.moe_combine`'s expert outputs.
    /// Its value is a whole group input, whose producer never joins.
    static bool readsIndexedRows(::mlir::OpOperand &use);
  }];
}

def Kiln_LinearGroupOp
    : Kiln_Op<"linear_group", [Pure, IsolatedFromAbove, SingleBlock]> {
  let summary = "Independent GEMMs that run as one launch";
  let description = [{
    The GEMMs of the body (`kiln.linear`, `kiln.grouped_linear`,
    `kiln.gated_linear`) read only the group's inputs, never each other's
    results, and need one kernel: one gatedness, weight and input element
    type and FP8 block. FP8 GEMMs may mix f32 inputs, whose rows the grouped
    GEMV quantizes, with e4m3 codes a fused kernel quantized (a MoE layer's
    routed rows beside its shared expert's normed input). A GPU executor can then run them as one launch where
    it runs them as GEMVs (a decode step): one grid streams every weight,
    instead of one short launch per GEMM. This is MLA's `q_proj` (or
    `q_a_proj`) with `kv_a_proj_with_mqa` and a dense attention's q, k and
    v projections, which read one input, and a MoE layer's routed experts
    with its shared expert, which do not. Each GEMM keeps its own operands
    and arithmetic, so the results are those of the GEMMs run one by one,
    to the bit; the CPU executor runs them so.

    The entry block's arguments stand for `inputs` in order; `kiln.yield`
    returns each GEMM's result once, in the body's order. At most
    `kMaxLinears` (4) GEMMs, as the runtime's grouped GEMV takes.
    `kiln-group-linears` forms the groups.

    ```mlir
    %q, %kv = kiln.linear_group(%x, %wq, %wkv)
        : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<40x64xbf16>)
        -> (tensor<?x?x96xf32>, tensor<?x?x40xf32>) {
    ^bb0(%a: tensor<?x?x64xf32>, %b: tensor<96x64xbf16>,
         %c: tensor<40x64xbf16>):
      %0 = kiln.linear %a, %b : (tensor<?x?x64xf32>, tensor<96x64xbf16>)
          -> tensor<?x?x96xf32>
      %1 = kiln.linear %a, %c : (tensor<?x?x64xf32>, tensor<40x64xbf16>)
          -> tensor<?x?x40xf32>
      kiln.yield %0, %1 : tensor<?x?x96xf32>, tensor<?x?x40xf32>
    }
    ```
  }];
  let arguments = (ins Variadic<AnyRankedTensor>:$inputs);
  let results = (outs Variadic<AnyRankedTensor>:$results);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = [{
    `(` $inputs `)` `:` functional-type($inputs, $results)
    attr-dict-with-keyword $body
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// The most GEMMs a group holds (the runtime's kGemvGroupMembers).
    static constexpr unsigned kMaxLinears = 4;
    /// Whether one kernel can run GEMMs `a` and `b` (each a kiln.linear,
    /// kiln.grouped_linear or kiln.gated_linear).
    static bool canGroup(::mlir::Operation *a, ::mlir::Operation *b);
  }];
}

def Kiln_YieldOp : Kiln_Op<"yield", [Pure, Terminator,
                                     ParentOneOf<["FusedOp", "LinearGroupOp"]>]> {
  let summary = "Returns the values a `kiln.fused` or `kiln.linear_group` writes";
  let description = [{
    ```mlir
    kiln.yield %s, %r : tensor<?x?x64xf32>, tensor<?x?x64xf32>
    ```
  }];
  let arguments = (ins Variadic<AnyRankedTensor>:$values);
  let assemblyFormat = "attr-dict ($values^ `:` type($values))?";
}

#endif // KILN_OPS_TD
