// A warp's tensor-core multiply-accumulate (PTX mma.sync.m16n8k16, bf16
// operands, f32 accumulators), written so that one kernel body builds for
// the GPU and for the host.
//
// A warp-level instruction spreads its operands over the 32 lanes, so code
// around it is per-lane code. Lanes<T> holds a lane's value under CUDA and
// all 32 lanes' values on the host, and KILN_FOR_EACH_LANE(lane) runs its
// body for the calling lane on the GPU and for lanes 0..31 in turn on the
// host (where one thread is the block's one warp). mmaBf16 is the
// instruction on the GPU; on the host it gathers the fragments into
// matrices by the layout the PTX ISA documents for m16n8k16 (section
// "Matrix Fragments for mma.m16n8k16 with floating point type") and
// multiplies them, so the host build checks every index a kernel computes
// for its fragments. The host SIMT build (HostSimt.h) is per lane as on the
// GPU; its mmaBf16 gathers the warp's fragments from the other lanes.
//
// Fragments (g = lane / 4, t = lane % 4; register i holds elements 2i, 2i+1,
// the lower index in the low 16 bits):
//   A (16 x 16, row-major): a0,a1 (g, 2t..2t+1)   a2,a3 (g+8, 2t..2t+1)
//                           a4,a5 (g, 2t+8..+9)   a6,a7 (g+8, 2t+8..+9)
//   B (16 x 8, k x n):      b0,b1 (2t..2t+1, g)   b2,b3 (2t+8..2t+9, g)
//   C (16 x 8, f32):        c0,c1 (g, 2t..2t+1)   c2,c3 (g+8, 2t..2t+1)
#ifndef KILN_KERNELS_WARP_MMA_H
#define KILN_KERNELS_WARP_MMA_H

#include "FusedPrelude.h"

KILN_KERNELS_BEGIN

struct MmaA {
  uint32_t r[4];
};
struct MmaB {
  uint32_t r[2];
};
struct MmaC {
  float r[4];
};

#if KILN_SIMT
template <class T> struct Lanes {
  T value;
  KILN_FN T &operator[](int) { return value; }
  KILN_FN const T &operator[](int) const { return value; }
};
#define KILN_FOR_EACH_LANE(lane)                                               \
  for (int lane = KILN_LANE, lane##End = KILN_LANE + 1; lane < lane##End;      \
       ++lane)
#else
template <class T> struct Lanes {
  T value[32];
  T &operator[](int lane) { return value[lane]; }
  const T &operator[](int lane) const { return value[lane]; }
};
#define KILN_FOR_EACH_LANE(lane) for (int lane = 0; lane < 32; ++lane)
#endif

/// Two floats rounded to bf16 (to nearest even) in one register, `low` in
/// the low half.
KILN_FN uint32_t packBf16x2(float low, float high) {
#if defined(__CUDACC__)
  // One instruction; cvt puts its first source in the upper half.
  uint32_t bits;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(bits) : "f"(high), "f"(low));
  return bits;
#else
  return uint32_t{encodeBf16(low)} | (uint32_t{encodeBf16(high)} << 16);
#endif
}

#if !defined(__CUDACC__)
/// Element `i` (0-based, low half first) of registers holding bf16 pairs.
inline float bf16Element(const uint32_t *registers, int i) {
  return floatFromBits((registers[i / 2] >> (16 * (i % 2)) & 0xffffu) << 16);
}

/// The host's mma: the warp's A and B fragments (every lane's) as the
/// matrices they hold by the PTX layout.
struct HostMmaOperands {
  float a[16][16], b[16][8];

  template <class ALanes, class BLanes>
  HostMmaOperands(const ALanes &fa, const BLanes &fb) {
    for (int lane = 0; lane < 32; ++lane) {
      int g = lane / 4, t = lane % 4;
      for (int i = 0; i < 8; ++i)
        a[g + 8 * ((i / 2) % 2)][2 * t + i % 2 + 8 * (i / 4)] =
            bf16Element(fa[lane].r, i);
      for (int i = 0; i < 4; ++i)
        b[2 * t + i % 2 + 8 * (i / 2)][g] = bf16Element(fb[lane].r, i);
    }
  }

  /// Lane `lane`'s part of a . b added to its C fragment.
  void addProduct(MmaC &c, int lane) const {
    int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      int row = g + 8 * (i / 2), col = 2 * t + i % 2;
      float sum = 0.0f;
      for (int k = 0; k < 16; ++k)
        sum += a[row][k] * b[k][col];
      c.r[i] += sum;
    }
  }
};
#endif

/// c += a . b over one 16 x 8 x 16 tile, the warp's lanes together.
KILN_FN void mmaBf16(Lanes<MmaC> &c, const Lanes<MmaA> &a,
                     const Lanes<MmaB> &b) {
#if defined(__CUDACC__)
  MmaC &d = c.value;
  const MmaA &x = a.value;
  const MmaB &y = b.value;
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d.r[0]), "+f"(d.r[1]), "+f"(d.r[2]), "+f"(d.r[3])
               : "r"(x.r[0]), "r"(x.r[1]), "r"(x.r[2]), "r"(x.r[3]),
                 "r"(y.r[0]), "r"(y.r[1]));
#elif KILN_SIMT
  MmaA as[32];
  MmaB bs[32];
  ::kiln::simt::allGather(a.value, as);
  ::kiln::simt::allGather(b.value, bs);
  HostMmaOperands(as, bs).addProduct(c.value, KILN_LANE);
#else
  HostMmaOperands operands(a, b);
  for (int lane = 0; lane < 32; ++lane)
    operands.addProduct(c[lane], lane);
#endif
}

/// Each lane's value replaced by the largest (Max) or the sum of the four
/// lanes of its group (lanes 4g .. 4g + 3: one row of an mma fragment).
template <bool Max> KILN_FN void reduceOverGroup(Lanes<float> &v) {
#if KILN_SIMT
  for (int offset = 1; offset < 4; offset <<= 1) {
    float other = KILN_SHFL_XOR(v.value, offset);
    v.value = Max ? fmaxf(v.value, other) : v.value + other;
  }
#else
  for (int g = 0; g < 8; ++g) {
    float r = v[4 * g];
    for (int t = 1; t < 4; ++t)
      r = Max ? fmaxf(r, v[4 * g + t]) : r + v[4 * g + t];
    for (int t = 0; t < 4; ++t)
      v[4 * g + t] = r;
  }
#endif
}

KILN_KERNELS_END

#endif // KILN_KERNELS_WARP_MMA_H
