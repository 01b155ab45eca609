// kiln-fuse-gated-linear: a SwiGLU of two projections of one input becomes
// one kiln.gated_linear; the builder's tiny DeepSeek-V3 (a dense first
// layer, then routed and shared experts), then one rule per hand-written
// function.

// Every FFN of the model: the dense layer's, the routed experts' (grouped
// over the dispatch's offsets) and the shared expert's. No SwiGLU is left.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-fuse-gated-linear | FileCheck %s --check-prefix=V3
// V3-LABEL: func.func @forward
// V3: kiln.gated_linear %{{.*}}, %{{.*}}, %{{.*}} : (tensor<?x?x64xf32>, tensor<128x64xbf16>, tensor<128x64xbf16>) -> tensor<?x?x128xf32>
// V3: %[[R:[^,]*]], %[[OFF:[^,]*]], %{{.*}}, %{{.*}} = kiln.moe_dispatch
// V3: kiln.gated_linear %[[R]], %{{.*}}, %{{.*}} experts %[[OFF]] : (tensor<?x64xf32>, tensor<16x32x64xbf16>, tensor<16x32x64xbf16>, tensor<17xi32>) -> tensor<?x32xf32>
// V3: kiln.gated_linear %{{.*}}, %{{.*}}, %{{.*}} : (tensor<?x?x64xf32>, tensor<32x64xbf16>, tensor<32x64xbf16>) -> tensor<?x?x32xf32>
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-fuse-gated-linear | not grep kiln.swiglu

// FP8 weights keep their scales; after kiln-fuse, the dense GEMMs read the
// codes the norm's kernel quantized (input_scale), the grouped one its f32
// routed rows.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8=block=16 -kiln-absorb-latent-kv=mode=absorbed -kiln-fuse-gated-linear -kiln-fuse | FileCheck %s --check-prefix=FP8
// FP8-LABEL: func.func @forward
// FP8: kiln.gated_linear %{{.*}}, %{{.*}}, %{{.*}} scales %{{.*}}, %{{.*}} input_scale %{{.*}} {block_size = array<i64: 16, 16>} : (tensor<?x?x64xf8E4M3FN>, tensor<128x64xf8E4M3FN>, tensor<128x64xf8E4M3FN>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<?x?x4xf32>) -> tensor<?x?x128xf32>
// FP8: kiln.gated_linear %{{.*}}, %{{.*}}, %{{.*}} experts %{{.*}} scales %{{.*}}, %{{.*}} {block_size = array<i64: 16, 16>} : (tensor<?x64xf32>, tensor<16x32x64xf8E4M3FN>
// FP8: kiln.gated_linear %{{.*}}, %{{.*}}, %{{.*}} scales %{{.*}}, %{{.*}} input_scale

// The summary still counts the dense FFN layer.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-fuse-gated-linear -kiln-summarize | FileCheck %s --check-prefix=LAYERS
// LAYERS: kiln.layers = {attention = 3 : i64, dense_ffn = 1 : i64, moe = 2 : i64}

// RUN: kiln-opt %s -split-input-file -kiln-fuse-gated-linear | FileCheck %s

// CHECK-LABEL: func.func @dense
// CHECK-NEXT: %[[H:.*]] = kiln.gated_linear %arg0, %arg1, %arg2 : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
// CHECK-NEXT: return %[[H]]
func.func @dense(%x: tensor<?x?x64xf32>, %wg: tensor<96x64xbf16>,
                 %wu: tensor<96x64xbf16>) -> tensor<?x?x96xf32> {
  %g = kiln.linear %x, %wg : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %u = kiln.linear %x, %wu : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %h = kiln.swiglu %g, %u : tensor<?x?x96xf32>
  return %h : tensor<?x?x96xf32>
}

// -----

// The SwiGLU's operand order picks which weight is the gate.

// CHECK-LABEL: func.func @gate_second
// CHECK-NEXT: kiln.gated_linear %arg0, %arg2, %arg1
func.func @gate_second(%x: tensor<?x?x64xf32>, %wu: tensor<96x64xbf16>,
                       %wg: tensor<96x64xbf16>) -> tensor<?x?x96xf32> {
  %u = kiln.linear %x, %wu : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %g = kiln.linear %x, %wg : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %h = kiln.swiglu %g, %u : tensor<?x?x96xf32>
  return %h : tensor<?x?x96xf32>
}

// -----

// CHECK-LABEL: func.func @grouped
// CHECK-NEXT: kiln.gated_linear %arg0, %arg1, %arg2 experts %arg3 scales %arg4, %arg5 {block_size = array<i64: 16, 16>} : (tensor<?x64xf32>, tensor<8x32x64xf8E4M3FN>, tensor<8x32x64xf8E4M3FN>, tensor<9xi32>, tensor<8x2x4xf32>, tensor<8x2x4xf32>) -> tensor<?x32xf32>
// CHECK-NEXT: return
func.func @grouped(%r: tensor<?x64xf32>, %wg: tensor<8x32x64xf8E4M3FN>,
                   %wu: tensor<8x32x64xf8E4M3FN>, %off: tensor<9xi32>,
                   %sg: tensor<8x2x4xf32>, %su: tensor<8x2x4xf32>)
    -> tensor<?x32xf32> {
  %g = kiln.grouped_linear %r, %wg, %off scale %sg {block_size = array<i64: 16, 16>}
      : (tensor<?x64xf32>, tensor<8x32x64xf8E4M3FN>, tensor<9xi32>, tensor<8x2x4xf32>) -> tensor<?x32xf32>
  %u = kiln.grouped_linear %r, %wu, %off scale %su {block_size = array<i64: 16, 16>}
      : (tensor<?x64xf32>, tensor<8x32x64xf8E4M3FN>, tensor<9xi32>, tensor<8x2x4xf32>) -> tensor<?x32xf32>
  %h = kiln.swiglu %g, %u : tensor<?x32xf32>
  return %h : tensor<?x32xf32>
}

// -----

// A projection something else reads is computed anyway: left alone.

// CHECK-LABEL: func.func @gate_read_twice
// CHECK-NOT: kiln.gated_linear
// CHECK: kiln.swiglu
func.func @gate_read_twice(%x: tensor<?x?x64xf32>, %wg: tensor<96x64xbf16>,
                           %wu: tensor<96x64xbf16>)
    -> (tensor<?x?x96xf32>, tensor<?x?x96xf32>) {
  %g = kiln.linear %x, %wg : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %u = kiln.linear %x, %wu : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %h = kiln.swiglu %g, %u : tensor<?x?x96xf32>
  return %h, %g : tensor<?x?x96xf32>, tensor<?x?x96xf32>
}

// -----

// Projections of two different inputs.

// CHECK-LABEL: func.func @two_inputs
// CHECK-NOT: kiln.gated_linear
// CHECK: kiln.swiglu
func.func @two_inputs(%x: tensor<?x?x64xf32>, %y: tensor<?x?x64xf32>,
                      %wg: tensor<96x64xbf16>, %wu: tensor<96x64xbf16>)
    -> tensor<?x?x96xf32> {
  %g = kiln.linear %x, %wg : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %u = kiln.linear %y, %wu : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %h = kiln.swiglu %g, %u : tensor<?x?x96xf32>
  return %h : tensor<?x?x96xf32>
}

// -----

// A bias, weights of two types, one FP8 projection and one not: each left
// alone.

// CHECK-LABEL: func.func @mismatches
// CHECK-NOT: kiln.gated_linear
func.func @mismatches(%x: tensor<?x?x64xf32>, %wg: tensor<96x64xbf16>,
                      %wu: tensor<96x64xbf16>, %b: tensor<96xbf16>,
                      %w32: tensor<96x64xf32>, %q: tensor<96x64xf8E4M3FN>,
                      %s: tensor<6x4xf32>)
    -> (tensor<?x?x96xf32>, tensor<?x?x96xf32>, tensor<?x?x96xf32>) {
  %g0 = kiln.linear %x, %wg bias %b : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96xbf16>) -> tensor<?x?x96xf32>
  %u0 = kiln.linear %x, %wu : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %h0 = kiln.swiglu %g0, %u0 : tensor<?x?x96xf32>
  %g1 = kiln.linear %x, %wg : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %u1 = kiln.linear %x, %w32 : (tensor<?x?x64xf32>, tensor<96x64xf32>) -> tensor<?x?x96xf32>
  %h1 = kiln.swiglu %g1, %u1 : tensor<?x?x96xf32>
  %g2 = kiln.linear %x, %q scale %s {block_size = array<i64: 16, 16>} : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>, tensor<6x4xf32>) -> tensor<?x?x96xf32>
  %u2 = kiln.linear %x, %wu : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %h2 = kiln.swiglu %g2, %u2 : tensor<?x?x96xf32>
  return %h0, %h1, %h2 : tensor<?x?x96xf32>, tensor<?x?x96xf32>, tensor<?x?x96xf32>
}

// -----

// A SwiGLU of values no projection computes.

// CHECK-LABEL: func.func @swiglu_of_values
// CHECK-NOT: kiln.gated_linear
func.func @swiglu_of_values(%g: tensor<?x?x96xf32>, %u: tensor<?x?x96xf32>) -> tensor<?x?x96xf32> {
  %h = kiln.swiglu %g, %u : tensor<?x?x96xf32>
  return %h : tensor<?x?x96xf32>
}
