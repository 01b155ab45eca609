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

} // namespace kiln

#endif // KILN_RUNTIME_LAUNCHATTRIBUTES_H
