// kiln-fold-head-slices: a sliced head GEMM input is read in place. The
// builder's tiny DeepSeek-V3 with absorbed MLA (each query head's 16
// no-RoPE columns of 24 feed W_UK), then one rule per hand-written
// function.

// W_UK reads the query heads' first 16 columns directly; no slice of the
// query's [0, 16) is left (the RoPE part's [16, 8) stays, for the RoPE).
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv=mode=absorbed -kiln-fold-head-slices | FileCheck %s --check-prefix=V3
// V3-LABEL: func.func @forward
// V3: kiln.head_linear %{{.*}}, %{{.*}} {input_offset = 0 : i64} : (tensor<?x?x4x24xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
// V3-NOT: kiln.slice %{{.*}}[0, 16] : tensor<?x?x4x24xf32>
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv=mode=absorbed | FileCheck %s --check-prefix=BEFORE
// BEFORE: kiln.slice %{{.*}}[0, 16] : tensor<?x?x4x24xf32> -> tensor<?x?x4x16xf32>

// FP8 head GEMMs quantize whole input rows: left alone.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8=block=16 -kiln-absorb-latent-kv=mode=absorbed -kiln-fold-head-slices | FileCheck %s --check-prefix=FP8
// FP8: kiln.slice %{{.*}}[0, 16] : tensor<?x?x4x24xf32> -> tensor<?x?x4x16xf32>
// FP8-NOT: input_offset

// RUN: kiln-opt %s -split-input-file -kiln-fold-head-slices | FileCheck %s

// CHECK-LABEL: func.func @folded
// CHECK-NEXT: %[[Y:.*]] = kiln.head_linear %arg0, %arg1 {input_offset = 8 : i64} : (tensor<?x?x4x24xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
// CHECK-NEXT: return %[[Y]]
func.func @folded(%q: tensor<?x?x4x24xf32>, %w: tensor<4x32x16xbf16>)
    -> tensor<?x?x4x32xf32> {
  %s = kiln.slice %q[8, 16] : tensor<?x?x4x24xf32> -> tensor<?x?x4x16xf32>
  %y = kiln.head_linear %s, %w : (tensor<?x?x4x16xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
  return %y : tensor<?x?x4x32xf32>
}

// -----

// A slice others read stays for them.

// CHECK-LABEL: func.func @slice_read_twice
// CHECK-NEXT: %[[S:.*]] = kiln.slice %arg0[0, 16]
// CHECK-NEXT: %[[Y:.*]] = kiln.head_linear %arg0, %arg1 {input_offset = 0 : i64}
// CHECK-NEXT: return %[[Y]], %[[S]]
func.func @slice_read_twice(%q: tensor<?x?x4x24xf32>, %w: tensor<4x32x16xbf16>)
    -> (tensor<?x?x4x32xf32>, tensor<?x?x4x16xf32>) {
  %s = kiln.slice %q[0, 16] : tensor<?x?x4x24xf32> -> tensor<?x?x4x16xf32>
  %y = kiln.head_linear %s, %w : (tensor<?x?x4x16xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
  return %y, %s : tensor<?x?x4x32xf32>, tensor<?x?x4x16xf32>
}

// -----

// A slice of a slice: the offsets add up, one GEMM reads the first input.

// CHECK-LABEL: func.func @slice_of_slice
// CHECK-NEXT: kiln.head_linear %arg0, %arg1 {input_offset = 12 : i64} : (tensor<?x?x4x32xf32>, tensor<4x32x16xbf16>)
func.func @slice_of_slice(%q: tensor<?x?x4x32xf32>, %w: tensor<4x32x16xbf16>)
    -> tensor<?x?x4x32xf32> {
  %a = kiln.slice %q[4, 24] : tensor<?x?x4x32xf32> -> tensor<?x?x4x24xf32>
  %b = kiln.slice %a[8, 16] : tensor<?x?x4x24xf32> -> tensor<?x?x4x16xf32>
  %y = kiln.head_linear %b, %w : (tensor<?x?x4x16xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
  return %y : tensor<?x?x4x32xf32>
}
