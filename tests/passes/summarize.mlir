// RUN: kiln-opt %s -split-input-file -kiln-summarize | FileCheck %s
// Running the pass again recomputes the same numbers.
// RUN: kiln-opt %s -split-input-file -kiln-summarize -kiln-summarize | FileCheck %s
// The annotated module still parses and verifies.
// RUN: kiln-opt %s -split-input-file -kiln-summarize | kiln-opt -split-input-file | FileCheck %s

// Parameters of every weight type, plus FP8 block scales (f32):
//   @embed     100 x 16       bf16       1600 elements   3200 bytes
//   @norm      16             f32          16 elements     64 bytes
//   @w8        256 x 128      f8E4M3FN  32768 elements  32768 bytes
//   @w8.scale  2 x 1          f32           2 elements      8 bytes
//   @experts   4 x 8 x 16     f16         512 elements   1024 bytes
// parameters = 34898, parameter_bytes = 37064,
// bytes = {bf16 = 3200, f16 = 1024, f32 = 72, f8E4M3FN = 32768}.
// KV cache per token: 2*8*2 (bf16) + 2*8*4 (f32) + 24*1 (fp8) = 120 bytes.
// Experts: the largest num_experts of any kiln.moe_dispatch = 4.

// CHECK-LABEL: module attributes
// CHECK-SAME: kiln.summary = {bytes = {bf16 = 3200 : i64, f16 = 1024 : i64, f32 = 72 : i64, f8E4M3FN = 32768 : i64}, kv_cache_bytes_per_token = 120 : i64, parameter_bytes = 37064 : i64, parameters = 34898 : i64, routed_experts = 4 : i64}
module {
  kiln.parameter @embed : tensor<100x16xbf16>
  kiln.parameter @norm : tensor<16xf32>
  kiln.parameter @w8 : tensor<256x128xf8E4M3FN>
  kiln.parameter @w8.scale : tensor<2x1xf32>
  kiln.parameter @experts : tensor<4x8x16xf16> {source = "experts.{}.w"}
  kiln.kv_cache @k : tensor<2x8xbf16>
  kiln.kv_cache @v : tensor<2x8xf32>
  kiln.kv_cache @latent : tensor<24xf8E4M3FN>

  // Two attention layers, one of them with a MoE FFN.
  // CHECK-LABEL: func.func @forward
  // CHECK-SAME: attributes {kiln.layers = {attention = 2 : i64, dense_ffn = 1 : i64, moe = 1 : i64}}
  func.func @forward(%q: tensor<?x?x2x8xf32>, %pos: tensor<?x?xi32>,
                     %lens: tensor<?xi32>, %x: tensor<?x?x16xf32>,
                     %gw: tensor<4x16xf32>, %sw: tensor<16x16xf32>) {
    %0 = kiln.attention %q, %q, %q, %pos, %lens {scale = 0.5 : f64}
        : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>,
           tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x2x8xf32>
    %1 = kiln.attention %q, %q, %q, %pos, %lens {scale = 0.5 : f64}
        : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>,
           tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x2x8xf32>
    %w, %i = kiln.moe_gate %x, %gw softmax greedy
        {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64,
         routed_scaling_factor = 1.0 : f64}
        : (tensor<?x?x16xf32>, tensor<4x16xf32>)
        -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
    %r:4 = kiln.moe_dispatch %x, %i {num_experts = 4 : i64}
        : (tensor<?x?x16xf32>, tensor<?x?x2xi32>)
        -> (tensor<?x16xf32>, tensor<5xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
    // Routed experts' SwiGLU works on rows: not a dense FFN.
    %ra = kiln.swiglu %r#0, %r#0 : tensor<?x16xf32>
    %moe = kiln.moe_combine %ra, %w, %r#3
        : (tensor<?x16xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi32>)
        -> tensor<?x?x16xf32>
    // The shared expert's down projection is added to the MoE output: not
    // a dense FFN either.
    %sa = kiln.swiglu %x, %x : tensor<?x?x16xf32>
    %sd = kiln.linear %sa, %sw : (tensor<?x?x16xf32>, tensor<16x16xf32>)
        -> tensor<?x?x16xf32>
    %sum = kiln.add %moe, %sd : tensor<?x?x16xf32>
    // The dense layer's FFN.
    %da = kiln.swiglu %x, %x : tensor<?x?x16xf32>
    %dd = kiln.linear %da, %gw : (tensor<?x?x16xf32>, tensor<4x16xf32>)
        -> tensor<?x?x4xf32>
    return
  }

  // Counted per function: one dense layer.
  // CHECK-LABEL: func.func @mtp_1
  // CHECK-SAME: attributes {kiln.layers = {attention = 1 : i64, dense_ffn = 1 : i64, moe = 0 : i64}}
  func.func @mtp_1(%q: tensor<?x?x2x8xf32>, %pos: tensor<?x?xi32>,
                   %lens: tensor<?xi32>, %x: tensor<?x?x16xf32>) {
    %0 = kiln.attention %q, %q, %q, %pos, %lens {scale = 0.5 : f64}
        : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>,
           tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x2x8xf32>
    %1 = kiln.swiglu %x, %x : tensor<?x?x16xf32>
    return
  }

  // CHECK-LABEL: func.func @no_layers
  // CHECK-SAME: attributes {kiln.layers = {attention = 0 : i64, dense_ffn = 0 : i64, moe = 0 : i64}}
  func.func @no_layers() {
    return
  }
}

// -----

// An empty module: all zeros, no element types.

// CHECK-LABEL: module attributes
// CHECK-SAME: kiln.summary = {bytes = {}, kv_cache_bytes_per_token = 0 : i64, parameter_bytes = 0 : i64, parameters = 0 : i64, routed_experts = 0 : i64}
module {
}

// -----

// routed_experts is the maximum over all dispatches, in all functions;
// parameters of one type add up; the summary replaces a stale one.

// CHECK-LABEL: module attributes
// CHECK-SAME: kiln.summary = {bytes = {bf16 = 2304 : i64}, kv_cache_bytes_per_token = 1152 : i64, parameter_bytes = 2304 : i64, parameters = 1152 : i64, routed_experts = 16 : i64}
// CHECK-NOT: stale
module attributes {kiln.summary = {stale}} {
  // 16 x 64 + 2 x 64 = 1152 bf16 elements.
  kiln.parameter @gate : tensor<16x64xbf16>
  kiln.parameter @stacked : tensor<2x8x8xbf16> {source = "l.{}.w"}
  // 576 x 2 bytes: one MLA latent + rope key slot.
  kiln.kv_cache @c : tensor<576xbf16>

  // CHECK-LABEL: func.func @a
  // CHECK-SAME: kiln.layers = {attention = 0 : i64, dense_ffn = 0 : i64, moe = 0 : i64}
  func.func @a(%x: tensor<?x?x64xbf16>, %i: tensor<?x?x8xi32>) {
    %r:4 = kiln.moe_dispatch %x, %i {num_experts = 8 : i64}
        : (tensor<?x?x64xbf16>, tensor<?x?x8xi32>)
        -> (tensor<?x64xbf16>, tensor<9xi32>, tensor<?xi32>,
            tensor<?x?x8xi32>)
    return
  }
  // CHECK-LABEL: func.func @b
  func.func @b(%x: tensor<?x?x64xbf16>, %i: tensor<?x?x8xi32>) {
    %r:4 = kiln.moe_dispatch %x, %i {num_experts = 16 : i64}
        : (tensor<?x?x64xbf16>, tensor<?x?x8xi32>)
        -> (tensor<?x64xbf16>, tensor<17xi32>, tensor<?xi32>,
            tensor<?x?x8xi32>)
    %s:4 = kiln.moe_dispatch %x, %i {num_experts = 2 : i64}
        : (tensor<?x?x64xbf16>, tensor<?x?x8xi32>)
        -> (tensor<?x64xbf16>, tensor<3xi32>, tensor<?xi32>,
            tensor<?x?x8xi32>)
    return
  }
}

// Fused groups hide nothing from the layer counts (a shared expert's add
// may sit in a group with the next norm).
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse -kiln-summarize | FileCheck %s --check-prefix=FUSED
// FUSED: kiln.layers = {attention = 3 : i64, dense_ffn = 1 : i64, moe = 2 : i64}
