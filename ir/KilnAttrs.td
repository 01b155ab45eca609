//===- KilnAttrs.td - kiln enums and attributes ------------*- tablegen -*-===//
#ifndef KILN_ATTRS_TD
#define KILN_ATTRS_TD

include "ir/KilnDialect.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/EnumAttr.td"

//===----------------------------------------------------------------------===//
// Enums
//===----------------------------------------------------------------------===//

def Kiln_ScoringFunc : I32EnumAttr<"ScoringFunc",
    "how router logits become expert scores", [
  I32EnumAttrCase<"softmax", 0>,
  I32EnumAttrCase<"sigmoid", 1>,
]> {
  let genSpecializedAttr = 0;
  let cppNamespace = "::mlir::kiln";
}
def Kiln_ScoringFuncAttr : EnumAttr<Kiln_Dialect, Kiln_ScoringFunc, "scoring"> {
  let assemblyFormat = "$value";
}

def Kiln_TopkMethod : I32EnumAttr<"TopkMethod",
    "how the MoE gate selects experts", [
  I32EnumAttrCase<"greedy", 0>,
  I32EnumAttrCase<"group_limited_greedy", 1>,
  I32EnumAttrCase<"noaux_tc", 2>,
]> {
  let genSpecializedAttr = 0;
  let cppNamespace = "::mlir::kiln";
}
def Kiln_TopkMethodAttr : EnumAttr<Kiln_Dialect, Kiln_TopkMethod, "topk"> {
  let assemblyFormat = "$value";
}

def Kiln_RopeKind : I32EnumAttr<"RopeKind", "rotary embedding frequency scheme", [
  I32EnumAttrCase<"plain", 0>,
  I32EnumAttrCase<"yarn", 1>,
  I32EnumAttrCase<"llama3", 2>,
]> {
  let genSpecializedAttr = 0;
  let cppNamespace = "::mlir::kiln";
}

//===----------------------------------------------------------------------===//
// Attributes
//===----------------------------------------------------------------------===//

class Kiln_Attr<string name, string attrMnemonic, list<Trait> traits = []>
    : AttrDef<Kiln_Dialect, name, traits> {
  let mnemonic = attrMnemonic;
}

// A double printed so that it always reads back as the same double.
class Kiln_F64Param<string defaultVal>
    : AttrOrTypeParameter<"::llvm::APFloat", "an IEEE double"> {
  let comparator = "$_lhs.bitwiseIsEqual($_rhs)";
  let parser = [{ ::mlir::kiln::parseF64($_parser) }];
  let printer = [{ ::mlir::kiln::printF64($_printer, $_self) }];
  let defaultValue = "::llvm::APFloat(" # defaultVal # ")";
}

class Kiln_BoolParam<string defaultVal> : AttrOrTypeParameter<"bool", ""> {
  let parser = [{ ::mlir::kiln::parseBool($_parser) }];
  let printer = [{ $_printer << ($_self ? "true" : "false") }];
  let defaultValue = defaultVal;
}

def Kiln_RopeAttr : Kiln_Attr<"Rope", "rope"> {
  let summary = "Rotary position embedding parameters";
  let description = [{
    Everything needed to compute the rotation of a `kiln.rope` op: the
    frequency scheme and its constants, copied from the checkpoint's
    `rope_theta` and `rope_scaling`.

    - `plain`: `inv_freq[i] = theta^(-2i/d)` (Qwen2).
    - `yarn`: YaRN interpolation between `inv_freq` and `inv_freq / factor`
      with the `beta_fast`/`beta_slow` ramp over `original_max_position`,
      and cos/sin scaled by `mscale(factor, mscale) /
      mscale(factor, mscale_all_dim)` (DeepSeek-V2/V3).
    - `llama3`: the Llama 3.1 piecewise scaling with `low_freq_factor`,
      `high_freq_factor` and `original_max_position`.

    `interleaved` selects the pairing of rotated dimensions: adjacent pairs
    `(2i, 2i+1)` (DeepSeek's checkpoints) instead of halves `(i, i + d/2)`.
    The output keeps the input's layout.

    Example:
    ```mlir
    #kiln.rope<kind = yarn, theta = 10000.0, factor = 40.0,
               original_max_position = 4096, interleaved = true>
    ```
  }];
  let parameters = (ins
    EnumParameter<Kiln_RopeKind>:$kind,
    Kiln_F64Param<"10000.0">:$theta,
    Kiln_F64Param<"1.0">:$factor,
    DefaultValuedParameter<"int64_t", "0">:$original_max_position,
    Kiln_F64Param<"32.0">:$beta_fast,
    Kiln_F64Param<"1.0">:$beta_slow,
    Kiln_F64Param<"1.0">:$mscale,
    Kiln_F64Param<"0.0">:$mscale_all_dim,
    Kiln_F64Param<"1.0">:$low_freq_factor,
    Kiln_F64Param<"4.0">:$high_freq_factor,
    Kiln_BoolParam<"false">:$interleaved
  );
  let assemblyFormat = "`<` struct(params) `>`";
  let genVerifyDecl = 1;
}

def Kiln_HeadSliceAttr : Kiln_Attr<"HeadSlice", "head_slice"> {
  let summary = "A per-head row slice of a weight, optionally transposed";
  let description = [{
    Derives a `[heads, size, in]` weight (or `[heads, in, size]` with
    `transpose`) from a checkpoint tensor of shape `[heads * rows, in]`: the
    source is viewed as `[heads, rows, in]` and rows `[offset, offset +
    size)` of every head are kept. MLA absorption uses it to take `W_UK` and
    `W_UV` out of `kv_b_proj`. The compiler applies it to embedded weights;
    the runtime applies it at load to external ones.

    ```mlir
    #kiln.head_slice<heads = 128, rows = 256, offset = 0, size = 128,
                     transpose = true>
    ```
  }];
  let parameters = (ins "int64_t":$heads, "int64_t":$rows, "int64_t":$offset,
                        "int64_t":$size, Kiln_BoolParam<"false">:$transpose);
  let assemblyFormat = "`<` struct(params) `>`";
  let genVerifyDecl = 1;
}

def Kiln_Fp8QuantAttr : Kiln_Attr<"Fp8Quant", "fp8_quant"> {
  let summary = "Block-wise e4m3 quantization of a weight from its source";
  let description = [{
    The parameter is quantized from its bf16, f16 or f32 source tensor,
    viewed as `[..., rows, cols]` matrices, in blocks of `[block_rows,
    block_cols]` with one fp32 scale each (DeepSeek-V3's recipe): `s = amax /
    448` (rounded up to a power of two with `ue8m0`; 1 for an all-zero
    block) and `q = e4m3(x / s)`, rounded to nearest even. Without `scale`
    the parameter holds the codes (`f8E4M3FN`, the source's shape); with
    `scale` it holds the scales, `[..., ceil(rows / block_rows), ceil(cols /
    block_cols)]` in f32. The quantization comes before any `transform`. The
    compiler applies it to embedded weights, the runtime at load to external
    ones, with the same code.

    ```mlir
    #kiln.fp8_quant<block_rows = 128, block_cols = 128, scale = true>
    ```
  }];
  let parameters = (ins "int64_t":$block_rows, "int64_t":$block_cols,
                        Kiln_BoolParam<"false">:$scale,
                        Kiln_BoolParam<"false">:$ue8m0);
  let assemblyFormat = "`<` struct(params) `>`";
  let genVerifyDecl = 1;
}

def Kiln_PackedCacheAttr : Kiln_Attr<"PackedCache", "packed_cache"> {
  let summary = "Compact storage of a KV-cache slot: e4m3 then bf16 columns";
  let description = [{
    Each cached entry (the MLA latent `[c_kv | k_pe]`) is stored as one
    packed row: its first `fp8_columns` values as e4m3 with one fp32 scale
    per 128 values, `s = max(amax, 1e-4) / 448`, the remaining values as
    bf16. `fp8_columns = 0` is a bf16 cache (`--kv-cache-dtype=bf16`, the
    cache of a bf16 model in vLLM or transformers): 1,152 bytes per token
    and layer for a 512 + 64 latent. `fp8_columns = kv_lora_rank` is
    DeepSeek-V3's FP8 latent with a bf16 RoPE key: 656 bytes.

    ```mlir
    kiln.kv_cache @l.latent_cache : tensor<1x576xf32>
        {storage = #kiln.packed_cache<fp8_columns = 512>}
    ```
  }];
  let parameters = (ins "int64_t":$fp8_columns);
  let assemblyFormat = "`<` struct(params) `>`";
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// Bytes of one stored row of `elements` values: the runtime's
    /// PackedRowLayout (e4m3 codes padded to 4 bytes so that the scales
    /// stay aligned, the scales, the bf16 rest, padded to 4 bytes).
    int64_t getRowBytes(int64_t elements) const;
  }];
}

#endif // KILN_ATTRS_TD
