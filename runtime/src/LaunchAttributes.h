// Launch attributes (a plan launch's ints/floats) as kernel parameters,
// shared by the CPU and CUDA executors; the planner
// (codegen/PlanBuilder.cpp) writes them.
#ifndef KILN_RUNTIME_LAUNCHATTRIBUTES_H
#define KILN_RUNTIME_LAUNCHATTRIBUTES_H

#include "cpu/Kernels.h"
#include "runtime/schema/kiln_generated.h"

namespace kiln {

/// A Rope launch: ints [kind, original max position, interleaved], floats
/// [theta, factor, beta fast, beta slow, mscale, mscale all dim, low and
/// high frequency factors].
inline cpu::RopeParams ropeParams(const artifact::Launch &l) {
  auto ints = [&](unsigned i) { return l.ints()->Get(i); };
  auto floats = [&](unsigned i) { return l.floats()->Get(i); };
  cpu::RopeParams p;
  p.kind = static_cast<cpu::RopeKind>(ints(0));
  p.originalMaxPosition = ints(1);
  p.interleaved = ints(2) == 1;
  p.theta = floats(0);
  p.factor = floats(1);
  p.betaFast = floats(2);
  p.betaSlow = floats(3);
  p.mscale = floats(4);
  p.mscaleAllDim = floats(5);
  p.lowFreqFactor = floats(6);
  p.highFreqFactor = floats(7);
  return p;
}

/// A Broadcast launch's repeated axis: the first static size-1 axis of the
/// input that the output grows.
inline unsigned broadcastAxis(const artifact::TensorRef &from,
                              const artifact::TensorRef &to) {
  const auto &in = *from.shape();
  const auto &out = *to.shape();
  unsigned axis = 0;
  while (axis < out.size() &&
         !(in.Get(axis)->symbol() == artifact::DimSymbol::Static &&
           in.Get(axis)->size() == 1 && out.Get(axis)->size() != 1))
    ++axis;
  return axis;
}

/// The most launches a LinearGroup holds (kiln.linear_group's kMaxLinears;
/// the CUDA executor's grouped GEMV takes that many).
inline constexpr uint32_t kLinearGroupMaxMembers = 4;

/// Where a GatedLinear launch's arguments are: x, the gate and up weights,
/// then the expert offsets (grouped: ints[0] = 1), the gate and up block
/// scales (FP8: ints [grouped, block rows, block cols, ue8m0]), the input
/// scales (x as e4m3 codes), and the result. Indices of absent ones are -1.
struct GatedLinearArgs {
  int offsets = -1, gateScale = -1, upScale = -1, inputScale = -1, out = -1;
  bool fp8 = false;

  /// The layout the launch's ints and x's type give, for `count` arguments;
  /// out is -1 where the count does not match it.
  static GatedLinearArgs of(const artifact::Launch &l, size_t count) {
    GatedLinearArgs g;
    const auto *ints = l.ints();
    if (!ints || (ints->size() != 1 && ints->size() != 4) || count < 4)
      return g;
    int next = 3;
    if (ints->Get(0) == 1)
      g.offsets = next++;
    g.fp8 = ints->size() == 4;
    if (g.fp8) {
      g.gateScale = next++;
      g.upScale = next++;
    }
    if (l.args()->Get(0)->type() == artifact::ElementType::F8E4M3)
      g.inputScale = next++;
    if (static_cast<size_t>(next) + 1 == count)
      g.out = next;
    return g;
  }
};

} // namespace kiln

#endif // KILN_RUNTIME_LAUNCHATTRIBUTES_H
