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

#endif // KILN_ATTRS_TD
