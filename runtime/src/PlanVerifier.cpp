// Semantic verification of a plan: after the FlatBuffers verifier has
// checked the encoding, this checks what the executor relies on — tensor
// references in bounds of the arena, parameters and cache slots; element
// types; and for each kernel, the operand count, attribute count and the
// shape relations it indexes with. A plan that passes cannot make the
// executor read or write out of bounds.
#include "LaunchAttributes.h"
#include "ModelImpl.h"

#include "cpu/Kernels.h"
#include "cpu/PagedPacked.h"
#include "kiln/PlanShapes.h"

#include <algorithm>
#include <vector>

namespace kiln::detail {
namespace {

namespace art = artifact;
using Shape = flatbuffers::Vector<const art::Dim *>;

constexpr int kMaxRank = 8;
constexpr int64_t kMaxStaticDim = int64_t{1} << 32;

using Bounds = art::SymbolSizes;

/// The FlatBuffers verifier only aligns vectors to 4 bytes; 8-byte elements
/// (int64, double, Dim) of a crafted file could sit misaligned.
template <typename T> bool aligned(const flatbuffers::Vector<T> *v) {
  return !v || reinterpret_cast<uintptr_t>(v->Data()) % alignof(T) == 0;
}

bool sameDim(const art::Dim &a, const art::Dim &b) {
  return a.symbol() == b.symbol() &&
         (a.symbol() != art::DimSymbol::Static || a.size() == b.size());
}

class Verifier {
public:
  Verifier(const art::Model &plan, const std::string &source)
      : plan_(plan), source_(source) {}

  absl::Status run();
  /// Per entry point (after run): the arena bytes of every buffer but the
  /// logits, and the logits' first max_batch rows.
  const std::vector<uint64_t> &arenaBytesRowPerSequence() const {
    return rowPerSequence_;
  }

private:
  absl::Status fail(const std::string &what) const {
    return absl::InvalidArgumentError(source_ + ": invalid plan: " + where_ +
                                      what);
  }
  absl::Status checkRef(const art::TensorRef *ref, const char *role);
  absl::Status checkLaunch(const art::Launch &launch);
  absl::Status checkKernel(const art::Launch &launch);
  /// Fused groups: in order, within the launches, arguments in bounds, and
  /// a kernel of every GPU module.
  absl::Status checkFused(const art::EntryPoint &entry);
  /// Linear groups: in order, within the launches, apart from the fused
  /// groups; members are GEMM launches one GEMV kernel can run together
  /// (one gatedness, weight and input type, FP8 block) whose results
  /// overlap no other member's arguments (so none reads another's).
  absl::Status checkLinearGroups(const art::EntryPoint &entry);
  /// MoE dispatches a GPU may skip: the launches their ints name read the
  /// dispatch's routed rows as the input of a grouped GEMM of its offsets,
  /// outside the fused groups.
  absl::Status checkRoutedReaders(const art::EntryPoint &entry);
  /// Whether the arena bytes `a` and `b` span overlap.
  bool overlap(const art::TensorRef *a, const art::TensorRef *b) const {
    return a->storage() == art::Storage::Arena &&
           b->storage() == art::Storage::Arena &&
           a->offset() < b->offset() + arenaBytes(b) &&
           b->offset() < a->offset() + arenaBytes(a);
  }
  /// Bytes an arena reference spans at the entry point's bounds.
  uint64_t arenaBytes(const art::TensorRef *ref) const;
  /// An FP8 GEMM's weight and block scale, with ints [rows, cols, ue8m0]
  /// starting at `at`.
  bool fp8Scale(const art::Launch &launch, const art::TensorRef *w,
                const art::TensorRef *scale, unsigned at) const;
  /// Whether an attention or gather reads slot `index` in packed form.
  const art::KvSlot *packedSlot(const art::TensorRef *ref) const {
    if (ref->storage() != art::Storage::KvCache)
      return nullptr;
    const art::KvSlot *slot = plan_.kv_slots()->Get(ref->index());
    return slot->packed() ? slot : nullptr;
  }

  // Shape queries on verified references.
  static const Shape &shape(const art::TensorRef *r) { return *r->shape(); }
  static int rank(const art::TensorRef *r) {
    return static_cast<int>(r->shape()->size());
  }
  static const art::Dim &dim(const art::TensorRef *r, int i) {
    return *r->shape()->Get(
        static_cast<flatbuffers::uoffset_t>(i < 0 ? rank(r) + i : i));
  }
  static int64_t staticDim(const art::TensorRef *r, int i) {
    const art::Dim &d = dim(r, i);
    return d.symbol() == art::DimSymbol::Static ? d.size() : -1;
  }
  /// Dimensions [from, to) of a and b agree.
  static bool sameDims(const art::TensorRef *a, int aFrom,
                       const art::TensorRef *b, int bFrom, int count) {
    if (aFrom + count > rank(a) || bFrom + count > rank(b))
      return false;
    for (int i = 0; i < count; ++i)
      if (!sameDim(dim(a, aFrom + i), dim(b, bFrom + i)))
        return false;
    return true;
  }
  static bool sameShape(const art::TensorRef *a, const art::TensorRef *b) {
    return rank(a) == rank(b) && sameDims(a, 0, b, 0, rank(a));
  }
  /// The leading (batch, seq) pair: the first two dims are Batch, Seq.
  static bool isTokenMajor(const art::TensorRef *r) {
    return rank(r) >= 2 && dim(r, 0).symbol() == art::DimSymbol::Batch &&
           dim(r, 1).symbol() == art::DimSymbol::Seq;
  }
  static bool isRows(const art::TensorRef *r) {
    return rank(r) >= 1 && dim(r, 0).symbol() == art::DimSymbol::RoutedRows;
  }
  static bool isArena(const art::TensorRef *r, art::ElementType t) {
    return r->storage() == art::Storage::Arena && r->type() == t;
  }
  /// All dims after `from` are static.
  static bool staticFrom(const art::TensorRef *r, int from) {
    for (int i = from; i < rank(r); ++i)
      if (dim(r, i).symbol() != art::DimSymbol::Static)
        return false;
    return true;
  }

  const art::Model &plan_;
  std::string source_;
  std::string where_;
  Bounds bounds_{};
  uint64_t arenaBytes_ = 0;
  // The entry point's logits and its head's output (the same buffer),
  // left out of otherEnd_: the end of every other arena buffer checked.
  const art::TensorRef *logits_ = nullptr, *headOut_ = nullptr;
  uint64_t otherEnd_ = 0;
  std::vector<uint64_t> rowPerSequence_;
};

absl::Status Verifier::checkRef(const art::TensorRef *ref, const char *role) {
  if (!ref || !ref->shape())
    return fail(std::string("missing ") + role);
  if (!aligned(ref->shape()))
    return fail(std::string(role) + " has a misaligned shape");
  int r = rank(ref);
  if (r < 1 || r > kMaxRank)
    return fail(std::string(role) + " has rank " + std::to_string(r));
  uint64_t bytes = elementBytes(ref->type());
  for (const art::Dim *d : *ref->shape()) {
    if (d->symbol() > art::DimSymbol::RoutedRows)
      return fail(std::string(role) + " has an unknown dimension symbol");
    if (d->symbol() == art::DimSymbol::Static &&
        (d->size() < 1 || d->size() > kMaxStaticDim))
      return fail(std::string(role) + " has a dimension of size " +
                  std::to_string(d->size()));
    uint64_t n = bounds_.of(*d);
    if (n && bytes > (uint64_t{1} << 62) / n)
      return fail(std::string(role) + " is too large");
    bytes *= n;
  }
  switch (ref->storage()) {
  case art::Storage::Arena:
    // e4m3: FP8 activation codes (kiln.quantize_fp8).
    if (ref->type() != art::ElementType::F32 &&
        ref->type() != art::ElementType::I32 &&
        ref->type() != art::ElementType::F8E4M3)
      return fail(std::string(role) +
                  " in the arena must be f32, i32 or f8e4m3");
    if (ref->offset() % 4 != 0 || ref->offset() > arenaBytes_ ||
        bytes > arenaBytes_ - ref->offset())
      return fail(std::string(role) + " at arena offset " +
                  std::to_string(ref->offset()) + " (" + std::to_string(bytes) +
                  " bytes) exceeds the arena (" + std::to_string(arenaBytes_) +
                  " bytes)");
    if (ref != logits_ && ref != headOut_)
      otherEnd_ = std::max(otherEnd_, ref->offset() + bytes);
    return absl::OkStatus();
  case art::Storage::Parameter: {
    if (ref->index() >= plan_.parameters()->size())
      return fail(std::string(role) + " names parameter " +
                  std::to_string(ref->index()) + " of " +
                  std::to_string(plan_.parameters()->size()));
    const art::Parameter *p = plan_.parameters()->Get(ref->index());
    bool same =
        p->type() == ref->type() && p->shape()->size() == ref->shape()->size();
    for (int i = 0; same && i < r; ++i)
      same = dim(ref, i).symbol() == art::DimSymbol::Static &&
             dim(ref, i).size() == p->shape()->Get(i);
    if (!same)
      return fail(std::string(role) + " does not match parameter " +
                  p->name()->str());
    if (p->type() != art::ElementType::F32 &&
        p->type() != art::ElementType::BF16 &&
        p->type() != art::ElementType::F16 &&
        p->type() != art::ElementType::F8E4M3)
      return fail("parameter " + p->name()->str() + " has element type " +
                  elementTypeName(p->type()) +
                  ", which this runtime does not execute");
    return absl::OkStatus();
  }
  case art::Storage::KvCache: {
    if (ref->index() >= plan_.kv_slots()->size())
      return fail(std::string(role) + " names cache slot " +
                  std::to_string(ref->index()));
    const art::KvSlot *slot = plan_.kv_slots()->Get(ref->index());
    const auto &entry = *slot->entry_shape();
    bool same = slot->type() == ref->type() &&
                r == 2 + static_cast<int>(entry.size()) &&
                dim(ref, 0).symbol() == art::DimSymbol::Batch &&
                dim(ref, 1).symbol() == art::DimSymbol::KvLen;
    for (int i = 2; same && i + 1 < r; ++i)
      same = staticDim(ref, i) == entry.Get(i - 2);
    // The last dimension may be a column range [offset, offset + n) of the
    // entry's when the entry is a single row (absorbed MLA's latent).
    int64_t last = same ? staticDim(ref, r - 1) : -1;
    int64_t entryLast = entry.Get(entry.size() - 1);
    int64_t rowsPerEntry = 1;
    for (size_t i = 0; i + 1 < entry.size(); ++i)
      rowsPerEntry *= entry.Get(i);
    bool full = ref->offset() == 0 && last == entryLast;
    bool columns = rowsPerEntry == 1 && last >= 1 &&
                   ref->offset() <= static_cast<uint64_t>(entryLast - last);
    if (!same || !(full || columns))
      return fail(std::string(role) + " does not match cache slot " +
                  slot->name()->str());
    return absl::OkStatus();
  }
  case art::Storage::KvRows: {
    if (ref->index() >= plan_.kv_slots()->size())
      return fail(std::string(role) + " names cache slot " +
                  std::to_string(ref->index()));
    const art::KvSlot *slot = plan_.kv_slots()->Get(ref->index());
    const auto &entry = *slot->entry_shape();
    // f32 rows, or a packed slot's stored bytes.
    bool same = (slot->packed() ? ref->type() == art::ElementType::F8E4M3
                                : slot->type() == art::ElementType::F32 &&
                                      ref->type() == art::ElementType::F32) &&
                ref->offset() == 0 && r == static_cast<int>(entry.size());
    for (int i = 0; same && i < r; ++i)
      same = staticDim(ref, i) == entry.Get(i);
    if (!same)
      return fail(std::string(role) + " is not the rows of cache slot " +
                  slot->name()->str());
    return absl::OkStatus();
  }
  }
  return fail(std::string(role) + " has an unknown storage kind");
}

/// Results a kernel writes: the last arguments of its launch.
size_t resultCount(art::KernelKind kind) {
  switch (kind) {
  case art::KernelKind::KvAppend:
    return 0;
  case art::KernelKind::MoeGate:
    return 2;
  case art::KernelKind::MoeDispatch:
    return 4;
  default:
    return 1;
  }
}

uint64_t Verifier::arenaBytes(const art::TensorRef *ref) const {
  uint64_t bytes = elementBytes(ref->type());
  for (const art::Dim *d : *ref->shape())
    bytes *= bounds_.of(*d);
  return bytes;
}

bool Verifier::fp8Scale(const art::Launch &launch, const art::TensorRef *w,
                        const art::TensorRef *scale, unsigned at) const {
  int64_t rows = launch.ints()->Get(at), cols = launch.ints()->Get(at + 1);
  int64_t ue8m0 = launch.ints()->Get(at + 2);
  int r = rank(w);
  if (w->type() != art::ElementType::F8E4M3 || rows < 1 || cols < 1 ||
      rows > kMaxStaticDim || cols > kMaxStaticDim || ue8m0 < 0 || ue8m0 > 1 ||
      scale->storage() != art::Storage::Parameter ||
      scale->type() != art::ElementType::F32 || rank(scale) != r || r < 2)
    return false;
  for (int i = 0; i < r - 2; ++i)
    if (staticDim(scale, i) != staticDim(w, i))
      return false;
  return staticDim(scale, r - 2) == (staticDim(w, r - 2) + rows - 1) / rows &&
         staticDim(scale, r - 1) == (staticDim(w, r - 1) + cols - 1) / cols;
}

absl::Status Verifier::checkLaunch(const art::Launch &launch) {
  const auto *args = launch.args();
  size_t n = args ? args->size() : 0;
  if (!aligned(launch.ints()) || !aligned(launch.floats()))
    return fail("misaligned launch attributes");
  for (size_t i = 0; i < n; ++i) {
    if (absl::Status s = checkRef(args->Get(i), "argument"); !s.ok())
      return s;
    if (args->Get(i)->storage() == art::Storage::KvRows)
      return fail("argument " + std::to_string(i) +
                  " is a cache slot's rows, which only fused kernels write");
  }
  // FP8 weights only where a GEMM takes them with their block scale (the
  // GEMM cases check the scale); FP8 activation codes only as what
  // QuantizeFp8 writes and a Linear reads.
  bool gemm = launch.kernel() == art::KernelKind::Linear ||
              launch.kernel() == art::KernelKind::GroupedLinear ||
              launch.kernel() == art::KernelKind::HeadLinear;
  bool gated = launch.kernel() == art::KernelKind::GatedLinear;
  auto fp8Allowed = [&](size_t i) {
    return (gemm && i == 1) || (gated && i <= 2) ||
           (launch.kernel() == art::KernelKind::Linear && i == 0) ||
           (launch.kernel() == art::KernelKind::QuantizeFp8 && i == 1);
  };
  for (size_t i = 0; i < n; ++i)
    if (args->Get(i)->type() == art::ElementType::F8E4M3 && !fp8Allowed(i))
      return fail(
          std::string("kernel ") + art::EnumNameKernelKind(launch.kernel()) +
          " cannot take an FP8 tensor as argument " + std::to_string(i));
  if (absl::Status s = checkKernel(launch); !s.ok())
    return s;
  // Kernels read their operands while writing their results: a result must
  // not share arena bytes with any other argument.
  size_t results = resultCount(launch.kernel());
  for (size_t r = n - results; r < n; ++r) {
    const art::TensorRef *out = args->Get(static_cast<unsigned>(r));
    uint64_t outEnd = out->offset() + arenaBytes(out);
    for (size_t i = 0; i < n; ++i) {
      const art::TensorRef *other = args->Get(static_cast<unsigned>(i));
      if (i == r || other->storage() != art::Storage::Arena)
        continue;
      uint64_t otherEnd = other->offset() + arenaBytes(other);
      if (out->offset() < otherEnd && other->offset() < outEnd)
        return fail(std::string("kernel ") +
                    art::EnumNameKernelKind(launch.kernel()) +
                    ": a result overlaps another argument in the arena");
    }
  }
  return absl::OkStatus();
}

absl::Status Verifier::checkKernel(const art::Launch &launch) {
  const auto *args = launch.args();
  size_t n = args ? args->size() : 0;
  size_t ints = launch.ints() ? launch.ints()->size() : 0;
  size_t floats = launch.floats() ? launch.floats()->size() : 0;
  auto a = [&](size_t i) { return args->Get(static_cast<unsigned>(i)); };
  auto in = [&](int64_t i) { return launch.ints()->Get(i); };
  auto expect = [&](size_t nArgs, size_t nInts, size_t nFloats) {
    return n == nArgs && ints == nInts && floats == nFloats;
  };
  auto isParam = [](const art::TensorRef *r) {
    return r->storage() == art::Storage::Parameter;
  };
  const auto F32 = art::ElementType::F32, I32 = art::ElementType::I32;
  auto bad = [&](const std::string &why) {
    return fail(std::string("kernel ") +
                art::EnumNameKernelKind(launch.kernel()) + ": " + why);
  };

  switch (launch.kernel()) {
  case art::KernelKind::Embedding:
    if (!expect(3, 0, 0) || !isArena(a(0), I32) || rank(a(0)) != 2 ||
        !isParam(a(1)) || rank(a(1)) != 2 || !isArena(a(2), F32) ||
        rank(a(2)) != 3 || !sameDims(a(0), 0, a(2), 0, 2) ||
        staticDim(a(2), 2) != staticDim(a(1), 1) ||
        staticDim(a(1), 0) < static_cast<int64_t>(plan_.vocab_size()))
      return bad("expects tokens [B,S], table [V,D] with a row for every "
                 "token id, out [B,S,D]");
    return absl::OkStatus();
  case art::KernelKind::RMSNorm:
    if (!expect(3, 0, 1) || !isArena(a(0), F32) || !isParam(a(1)) ||
        rank(a(1)) != 1 || staticDim(a(0), -1) != staticDim(a(1), 0) ||
        !isArena(a(2), F32) || !sameShape(a(0), a(2)) ||
        !(launch.floats()->Get(0) > 0))
      return bad("expects x [..., D], weight [D], out like x, eps > 0");
    return absl::OkStatus();
  case art::KernelKind::Linear:
  case art::KernelKind::Logits: {
    bool linear = launch.kernel() == art::KernelKind::Linear;
    bool bias = linear && ints >= 1 && in(0) == 1;
    bool fp8 = linear && ints == 4;
    // Activations quantized beforehand: e4m3 codes, scales before `out`.
    bool quantized = fp8 && n > 0 && a(0)->type() == art::ElementType::F8E4M3;
    size_t nInts = linear ? (fp8 ? 4 : 1) : 0;
    if (!expect((bias ? 4 : 3) + (fp8 ? 1 : 0) + (quantized ? 1 : 0), nInts, 0))
      return bad("wrong number of operands or attributes");
    if (fp8 ? !fp8Scale(launch, a(1), a(n - (quantized ? 3 : 2)), 1)
            : a(1)->type() == art::ElementType::F8E4M3)
      return bad("an FP8 weight needs a block scale [ceil(out/rows), "
                 "ceil(in/cols)] f32 and block attributes");
    const art::TensorRef *x = a(0), *w = a(1), *out = a(n - 1);
    if (quantized) {
      const art::TensorRef *scales = a(n - 2);
      if (!isArena(x, art::ElementType::F8E4M3) || !isArena(scales, F32) ||
          rank(scales) != rank(x) || !sameDims(x, 0, scales, 0, rank(x) - 1) ||
          staticDim(scales, -1) !=
              (staticDim(x, -1) + in(2) - 1) / std::max<int64_t>(1, in(2)))
        return bad("expects e4m3 x [..., in] with scales [..., ceil(in / "
                   "cols)]");
    } else if (!isArena(x, F32)) {
      return bad("expects x [..., in] f32");
    }
    if (!isParam(w) || rank(w) != 2 || !isArena(out, F32) ||
        rank(x) != rank(out) || staticDim(x, -1) != staticDim(w, 1) ||
        staticDim(out, -1) != staticDim(w, 0) ||
        !sameDims(x, 0, out, 0, rank(x) - 1))
      return bad("expects x [..., in], weight [out, in], y [..., out]");
    if (bias && (!isParam(a(2)) || rank(a(2)) != 1 ||
                 staticDim(a(2), 0) != staticDim(w, 0)))
      return bad("bias must be [out]");
    return absl::OkStatus();
  }
  case art::KernelKind::Add:
  case art::KernelKind::SwiGLU:
    if (!expect(3, 0, 0) || !isArena(a(0), F32) || !isArena(a(1), F32) ||
        !isArena(a(2), F32) || !sameShape(a(0), a(1)) || !sameShape(a(0), a(2)))
      return bad("expects three f32 tensors of one shape");
    return absl::OkStatus();
  case art::KernelKind::Slice: {
    if (!expect(2, 2, 0) || !isArena(a(0), F32) || !isArena(a(1), F32) ||
        rank(a(0)) != rank(a(1)) || !sameDims(a(0), 0, a(1), 0, rank(a(0)) - 1))
      return bad("expects x [..., d] and out [..., size]");
    int64_t last = staticDim(a(0), -1), offset = in(0), size = in(1);
    if (last < 1 || offset < 0 || size < 1 || offset > last - size ||
        staticDim(a(1), -1) != size)
      return bad("range out of bounds");
    return absl::OkStatus();
  }
  case art::KernelKind::Concat: {
    if (n < 2 || ints || floats || !isArena(a(n - 1), F32))
      return bad("expects inputs and an output");
    const art::TensorRef *out = a(n - 1);
    int64_t total = 0;
    for (size_t i = 0; i + 1 < n; ++i) {
      if (!isArena(a(i), F32) || rank(a(i)) != rank(out) ||
          !sameDims(a(i), 0, out, 0, rank(out) - 1) || staticDim(a(i), -1) < 1)
        return bad("inputs must share all but the last dimension");
      total += staticDim(a(i), -1);
    }
    if (total != staticDim(out, -1))
      return bad("output's last dimension is not the sum of the inputs'");
    return absl::OkStatus();
  }
  case art::KernelKind::Broadcast: {
    if (!expect(2, 0, 0) || !isArena(a(0), F32) || !isArena(a(1), F32) ||
        rank(a(0)) != rank(a(1)))
      return bad("expects x and out of one rank");
    int broadcasts = 0;
    for (int i = 0; i < rank(a(0)); ++i)
      if (!sameDim(dim(a(0), i), dim(a(1), i))) {
        if (staticDim(a(0), i) != 1 || staticDim(a(1), i) < 1 ||
            !staticFrom(a(0), i))
          return bad("only a static size-1 dimension may broadcast");
        ++broadcasts;
      }
    if (broadcasts > 1)
      return bad("broadcasts more than one dimension");
    return absl::OkStatus();
  }
  case art::KernelKind::Rope:
    if (!expect(3, 3, 8) || !isArena(a(0), F32) || !isTokenMajor(a(0)) ||
        rank(a(0)) < 3 || !staticFrom(a(0), 2) || staticDim(a(0), -1) % 2 ||
        staticDim(a(0), -1) > cpu::kMaxRotaryDim || !isArena(a(1), I32) ||
        rank(a(1)) != 2 || !sameDims(a(1), 0, a(0), 0, 2) ||
        !isArena(a(2), F32) || !sameShape(a(0), a(2)) || in(0) < 0 ||
        in(0) > 2 || !(launch.floats()->Get(0) > 0))
      return bad("expects x [B,S,...,d even], positions [B,S], out like x");
    return absl::OkStatus();
  case art::KernelKind::KvAppend: {
    if (!expect(2, 1, 0) || !isArena(a(0), F32) || !isTokenMajor(a(0)) ||
        !isArena(a(1), I32) || rank(a(1)) != 2 ||
        !sameDims(a(1), 0, a(0), 0, 2) || in(0) < 0 ||
        static_cast<uint64_t>(in(0)) >= plan_.kv_slots()->size())
      return bad("expects value [B,S,entry...], positions [B,S], a slot");
    const art::KvSlot *slot = plan_.kv_slots()->Get(in(0));
    bool same = rank(a(0)) == 2 + static_cast<int>(slot->entry_shape()->size());
    for (int i = 2; same && i < rank(a(0)); ++i)
      same = staticDim(a(0), i) == slot->entry_shape()->Get(i - 2);
    if (!same)
      return bad("value does not match cache slot " + slot->name()->str());
    return absl::OkStatus();
  }
  case art::KernelKind::Attention: {
    if (!expect(6, 0, 1))
      return bad("wrong number of operands or attributes");
    const art::TensorRef *q = a(0), *k = a(1), *v = a(2), *out = a(5);
    for (const art::TensorRef *t : {q, k, v, out})
      if (rank(t) != 4 || !staticFrom(t, 2) || t->type() != F32 ||
          t->storage() == art::Storage::Parameter)
        return bad("q, k, v and out must be rank-4 f32 activations");
    if (!isTokenMajor(q) || dim(k, 0).symbol() != art::DimSymbol::Batch ||
        !sameDims(k, 0, v, 0, 3) || staticDim(k, 3) != staticDim(q, 3) ||
        staticDim(q, 2) % staticDim(k, 2) != 0 || !sameDims(out, 0, q, 0, 3) ||
        staticDim(out, 3) != staticDim(v, 3))
      return bad("expects q [B,S,H,dk], k [B,T,Hk,dk], v [B,T,Hk,dv], "
                 "out [B,S,H,dv] with Hk dividing H");
    if (!isArena(a(3), I32) || rank(a(3)) != 2 || !sameDims(a(3), 0, q, 0, 2) ||
        !isArena(a(4), I32) || rank(a(4)) != 1 ||
        dim(a(4), 0).symbol() != art::DimSymbol::Batch)
      return bad("expects positions [B,S] and kv_lengths [B]");
    // Keys and values are both cache views (read in place through the block
    // tables) or both arena tensors.
    if ((k->storage() == art::Storage::KvCache) !=
        (v->storage() == art::Storage::KvCache))
      return bad("k and v must both be cache views or both be computed");
    // A packed latent slot is read whole as the single kv head's keys, and
    // values are a prefix of its columns.
    const art::KvSlot *kSlot = packedSlot(k), *vSlot = packedSlot(v);
    if ((kSlot || vSlot) &&
        (kSlot != vSlot || staticDim(k, 2) != 1 || k->offset() != 0 ||
         v->offset() != 0 || staticDim(k, 3) != kSlot->entry_shape()->Get(1) ||
         staticDim(k, 3) > cpu::kMaxPackedColumns ||
         staticDim(v, 3) > staticDim(k, 3)))
      return bad("a packed latent slot must give keys (whole rows, one kv "
                 "head) and values (a prefix of its columns)");
    return absl::OkStatus();
  }
  case art::KernelKind::MoeGate: {
    bool bias = ints == 7 && in(6) == 1;
    if (!expect(bias ? 5 : 4, 7, 1))
      return bad("wrong number of operands or attributes");
    const art::TensorRef *x = a(0), *w = a(1), *weights = a(n - 2),
                         *indices = a(n - 1);
    int64_t experts = staticDim(w, 0), k = in(2), groups = in(3), keep = in(4);
    if (!isArena(x, F32) || rank(x) != 3 || !isTokenMajor(x) || !isParam(w) ||
        rank(w) != 2 || staticDim(w, 1) != staticDim(x, 2) ||
        !isArena(weights, F32) || !isArena(indices, I32) ||
        rank(weights) != 3 || !sameShape(weights, indices) ||
        !sameDims(weights, 0, x, 0, 2) || staticDim(weights, 2) != k ||
        k != static_cast<int64_t>(plan_.moe_top_k()))
      return bad("expects x [B,S,D], router [E,D], weights/indices [B,S,k]");
    if (in(0) < 0 || in(0) > 1 || in(1) < 0 || in(1) > 2 || k < 1 ||
        k > experts || experts > cpu::kMaxExperts || groups < 1 ||
        experts % groups || keep < 1 || keep > groups ||
        (in(1) != 0 && k > keep * (experts / groups)) || (in(1) == 2) != bias)
      return bad("inconsistent routing attributes");
    if (bias &&
        (!isParam(a(2)) || rank(a(2)) != 1 || staticDim(a(2), 0) != experts))
      return bad("correction bias must be [E]");
    return absl::OkStatus();
  }
  case art::KernelKind::MoeDispatch: {
    // Then optionally whether a GPU may skip it (0 or 1) and, if it may,
    // where the launches reading its routed rows are (checkRoutedReaders).
    if (n != 6 || floats != 0 || ints < 1 ||
        (ints > 1 && (in(1) < 0 || in(1) > 1 || (in(1) == 0) != (ints == 2))))
      return bad("wrong number of operands or attributes");
    int64_t experts = in(0);
    const art::TensorRef *x = a(0), *indices = a(1), *routed = a(2),
                         *offsets = a(3), *slots = a(4), *rows = a(5);
    if (!isArena(x, F32) || rank(x) != 3 || !isTokenMajor(x) ||
        !isArena(indices, I32) || rank(indices) != 3 ||
        !sameDims(indices, 0, x, 0, 2) ||
        staticDim(indices, 2) != static_cast<int64_t>(plan_.moe_top_k()) ||
        !isArena(routed, F32) || rank(routed) != 2 || !isRows(routed) ||
        staticDim(routed, 1) != staticDim(x, 2) || !isArena(offsets, I32) ||
        rank(offsets) != 1 || staticDim(offsets, 0) != experts + 1 ||
        experts < 1 || experts > cpu::kMaxExperts || !isArena(slots, I32) ||
        rank(slots) != 1 || !isRows(slots) || !isArena(rows, I32) ||
        rank(rows) != 3 || !sameDims(rows, 0, indices, 0, 3))
      return bad("expects x [B,S,D], indices [B,S,k], routed [R,D], "
                 "offsets [E+1], slots [R], selection rows [B,S,k]");
    return absl::OkStatus();
  }
  case art::KernelKind::GroupedLinear: {
    bool fp8 = ints == 3;
    if (!expect(fp8 ? 5 : 4, fp8 ? 3 : 0, 0))
      return bad("wrong number of operands or attributes");
    const art::TensorRef *x = a(0), *w = a(1), *offsets = a(2), *out = a(n - 1);
    if (fp8 ? !fp8Scale(launch, w, a(3), 0)
            : w->type() == art::ElementType::F8E4M3)
      return bad("an FP8 weight needs a block scale [E, ceil(out/rows), "
                 "ceil(in/cols)] f32 and block attributes");
    if (!isArena(x, F32) || rank(x) != 2 || !isRows(x) || !isParam(w) ||
        rank(w) != 3 || staticDim(w, 2) != staticDim(x, 1) ||
        !isArena(offsets, I32) || rank(offsets) != 1 ||
        staticDim(offsets, 0) != staticDim(w, 0) + 1 || !isArena(out, F32) ||
        rank(out) != 2 || !isRows(out) || staticDim(out, 1) != staticDim(w, 1))
      return bad("expects x [R,in], weight [E,out,in], offsets [E+1], "
                 "y [R,out]");
    return absl::OkStatus();
  }
  case art::KernelKind::HeadLinear: {
    // ints: [input offset], then an FP8 weight's block attributes.
    bool fp8 = ints == 4;
    if (!expect(fp8 ? 4 : 3, fp8 ? 4 : 1, 0))
      return bad("wrong number of operands or attributes");
    const art::TensorRef *x = a(0), *w = a(1), *out = a(n - 1);
    if (fp8 ? !fp8Scale(launch, w, a(2), 1)
            : w->type() == art::ElementType::F8E4M3)
      return bad("an FP8 weight needs a block scale [H, ceil(out/rows), "
                 "ceil(in/cols)] f32 and block attributes");
    // Each head's columns [offset, offset + in) of x; FP8 GEMMs quantize
    // whole rows.
    int64_t offset = in(0);
    if (rank(x) < 1 || rank(w) != 3 || offset < 0 ||
        offset > staticDim(x, -1) - staticDim(w, 2) ||
        (fp8 && staticDim(x, -1) != staticDim(w, 2)))
      return bad("input columns out of the input's rows");
    if (!isArena(x, F32) || rank(x) < 2 || !isParam(w) || !isArena(out, F32) ||
        rank(out) != rank(x) || staticDim(x, -2) != staticDim(w, 0) ||
        staticDim(out, -1) != staticDim(w, 1) ||
        !sameDims(x, 0, out, 0, rank(x) - 1))
      return bad("expects x [..., H, in], weight [H, out, in], "
                 "y [..., H, out]");
    return absl::OkStatus();
  }
  case art::KernelKind::QuantizeFp8: {
    if (!expect(3, 2, 0))
      return bad("wrong number of operands or attributes");
    const art::TensorRef *x = a(0), *codes = a(1), *scales = a(2);
    int64_t cols = in(0);
    if (cols < 1 || cols > kMaxStaticDim || in(1) < 0 || in(1) > 1 ||
        !isArena(x, F32) || !isArena(codes, art::ElementType::F8E4M3) ||
        !isArena(scales, F32) || !sameShape(x, codes) ||
        rank(scales) != rank(x) || !sameDims(x, 0, scales, 0, rank(x) - 1) ||
        staticDim(scales, -1) != (staticDim(x, -1) + cols - 1) / cols)
      return bad("expects x [..., n] f32, codes like x e4m3, scales "
                 "[..., ceil(n / cols)] f32, cols >= 1, ue8m0 0 or 1");
    return absl::OkStatus();
  }
  case art::KernelKind::KvGather:
    if (!expect(2, 0, 0) || a(0)->storage() != art::Storage::KvCache ||
        !isArena(a(1), F32) || !sameShape(a(0), a(1)))
      return bad("expects a cache view and an arena copy of its shape");
    return absl::OkStatus();
  case art::KernelKind::GatedLinear: {
    GatedLinearArgs g = GatedLinearArgs::of(launch, n);
    if (g.out < 0 || floats || in(0) < 0 || in(0) > 1)
      return bad("wrong number of operands or attributes");
    const art::TensorRef *x = a(0), *gate = a(1), *up = a(2), *out = a(g.out);
    bool grouped = g.offsets >= 0;
    int r = grouped ? 3 : 2;
    if (!isParam(gate) || !isParam(up) || gate->type() != up->type() ||
        rank(gate) != r || rank(up) != r)
      return bad(grouped ? "expects gate and up weights [E,out,in] of one type"
                         : "expects gate and up weights [out,in] of one type");
    for (int i = 0; i < r; ++i)
      if (staticDim(gate, i) != staticDim(up, i))
        return bad("gate and up weights differ in shape");
    if (g.fp8 ? !fp8Scale(launch, gate, a(g.gateScale), 1) ||
                    !fp8Scale(launch, up, a(g.upScale), 1)
              : gate->type() == art::ElementType::F8E4M3)
      return bad("FP8 weights need block scales [..., ceil(out/rows), "
                 "ceil(in/cols)] f32 and block attributes");
    if (g.inputScale >= 0) {
      const art::TensorRef *scales = a(g.inputScale);
      if (grouped || !g.fp8 || !isArena(x, art::ElementType::F8E4M3) ||
          !isArena(scales, F32) || rank(scales) != rank(x) ||
          !sameDims(x, 0, scales, 0, rank(x) - 1) ||
          staticDim(scales, -1) !=
              (staticDim(x, -1) + in(2) - 1) / std::max<int64_t>(1, in(2)))
        return bad("expects e4m3 x [..., in] with scales [..., ceil(in / "
                   "cols)] and FP8 dense weights");
    } else if (!isArena(x, F32)) {
      return bad("expects x [..., in] f32");
    }
    if (!isArena(out, F32) || rank(x) != rank(out) ||
        staticDim(x, -1) != staticDim(gate, -1) ||
        staticDim(out, -1) != staticDim(gate, -2) ||
        !sameDims(x, 0, out, 0, rank(x) - 1))
      return bad("expects x [..., in] and y [..., out]");
    if (grouped) {
      const art::TensorRef *offsets = a(g.offsets);
      if (rank(x) != 2 || !isRows(x) || !isRows(out) ||
          !isArena(offsets, I32) || rank(offsets) != 1 ||
          staticDim(offsets, 0) != staticDim(gate, 0) + 1)
        return bad("expects routed rows x [R,in], offsets [E+1], y [R,out]");
    }
    return absl::OkStatus();
  }
  case art::KernelKind::MoeCombine: {
    if (!expect(4, 0, 0))
      return bad("wrong number of operands or attributes");
    const art::TensorRef *y = a(0), *weights = a(1), *rows = a(2), *out = a(3);
    if (!isArena(y, F32) || rank(y) != 2 || !isRows(y) ||
        !isArena(weights, F32) || rank(weights) != 3 ||
        !isTokenMajor(weights) ||
        staticDim(weights, 2) != static_cast<int64_t>(plan_.moe_top_k()) ||
        !isArena(rows, I32) || rank(rows) != 3 ||
        !sameDims(rows, 0, weights, 0, 3) || !isArena(out, F32) ||
        rank(out) != 3 || !sameDims(out, 0, weights, 0, 2) ||
        staticDim(out, 2) != staticDim(y, 1))
      return bad("expects y [R,D], weights [B,S,k], selection rows [B,S,k], "
                 "out [B,S,D]");
    return absl::OkStatus();
  }
  }
  return bad("unknown kernel");
}

absl::Status Verifier::run() {
  if (!plan_.parameters() || !plan_.kv_slots() || !plan_.entry_points() ||
      plan_.entry_points()->size() == 0)
    return fail("missing parameter, cache or entry-point tables");
  // Generous bounds on the sizes a session allocates for: far beyond any
  // real deployment, small enough that the products cannot overflow.
  constexpr uint64_t kMaxContext = 1u << 24, kMaxBatch = 1u << 16,
                     kMaxStepTokens = 1u << 24;
  if (plan_.vocab_size() < 1 || plan_.vocab_size() > kMaxStaticDim ||
      plan_.max_context() < 1 || plan_.max_context() > kMaxContext ||
      plan_.moe_top_k() > static_cast<uint32_t>(cpu::kMaxExperts))
    return fail("vocab_size, max_context or moe_top_k out of range");
  for (const art::Parameter *p : *plan_.parameters()) {
    if (!p->name() || !p->shape() || p->shape()->size() == 0 ||
        !aligned(p->shape()))
      return fail("a parameter has no name or a bad shape");
    uint64_t bytes = elementBytes(p->type());
    for (int64_t d : *p->shape()) {
      if (d < 1 || d > kMaxStaticDim || bytes > (uint64_t{1} << 62) / d)
        return fail("parameter " + p->name()->str() + " has a bad shape");
      bytes *= static_cast<uint64_t>(d);
    }
    if (const art::HeadSlice *t = p->transform()) {
      const auto &shape = *p->shape();
      if (shape.size() != 3 || t->heads() != shape.Get(0) || t->rows() < 1 ||
          t->rows() > kMaxStaticDim || t->offset() < 0 || t->size() < 1 ||
          t->offset() > t->rows() - t->size() ||
          t->size() != shape.Get(t->transpose() ? 2 : 1))
        return fail("parameter " + p->name()->str() +
                    " has a head_slice transform that does not fit it");
    }
    if (bytes != p->bytes())
      return fail("parameter " + p->name()->str() + " declares " +
                  std::to_string(p->bytes()) + " bytes for " +
                  std::to_string(bytes) + " bytes of elements");
  }
  for (const art::KvSlot *slot : *plan_.kv_slots()) {
    if (!slot->name() || !slot->entry_shape() ||
        !aligned(slot->entry_shape()) || slot->type() != art::ElementType::F32)
      return fail("a cache slot has no name, no shape or a non-f32 type");
    for (int64_t d : *slot->entry_shape())
      if (d < 1 || d > kMaxStaticDim)
        return fail("cache slot " + slot->name()->str() + " has a bad shape");
    const auto &entry = *slot->entry_shape();
    if ((slot->packed() || slot->fp8_columns() != 0) &&
        (!slot->packed() || entry.size() != 2 || entry.Get(0) != 1 ||
         slot->fp8_columns() < 0 || slot->fp8_columns() > entry.Get(1)))
      return fail("cache slot " + slot->name()->str() +
                  " has a packed row that does not fit a [1, n] entry, or "
                  "FP8 columns without one");
  }
  if (plan_.gpu_modules())
    for (const art::GpuModule *m : *plan_.gpu_modules()) {
      const auto *cubin = m->cubin();
      if (!m->arch() || m->arch()->size() == 0 || !m->ptx() || !cubin ||
          cubin->size() < 4 || cubin->Get(0) != 0x7f || cubin->Get(1) != 'E' ||
          cubin->Get(2) != 'L' || cubin->Get(3) != 'F' || !m->kernels())
        return fail("a GPU module lacks its architecture, an ELF cubin, its "
                    "PTX or its kernel table");
      for (const art::GpuKernel *k : *m->kernels())
        if (!k->name() || k->name()->size() == 0 || k->block_threads() == 0 ||
            k->block_threads() > 1024)
          return fail("a GPU kernel lacks a name or has a bad block size");
    }
  if (plan_.host_modules())
    for (const art::HostModule *m : *plan_.host_modules()) {
      const auto *object = m->shared_object();
      if (!m->target() || m->target()->size() == 0 || !object ||
          object->size() < 4 || object->Get(0) != 0x7f ||
          object->Get(1) != 'E' || object->Get(2) != 'L' ||
          object->Get(3) != 'F' || !m->kernels())
        return fail("a CPU kernel module lacks its target, an ELF shared "
                    "object or its kernel table");
      for (const art::HostKernel *k : *m->kernels())
        if (!k->name() || k->name()->size() == 0)
          return fail("a CPU kernel lacks a name");
    }
  for (const art::EntryPoint *entry : *plan_.entry_points()) {
    if (!entry->name() || !entry->launches())
      return fail("an entry point has no name or launches");
    where_ = "entry point " + entry->name()->str() + ": ";
    if (entry->max_batch() < 1 || entry->max_batch() > kMaxBatch ||
        entry->max_seq() < 1 || entry->max_seq() > plan_.max_context() ||
        uint64_t{entry->max_batch()} * entry->max_seq() > kMaxStepTokens)
      return fail("bad max_batch/max_seq");
    bounds_ = {entry->max_batch(), entry->max_seq(), plan_.max_context(),
               uint64_t{entry->max_batch()} * entry->max_seq() *
                   plan_.moe_top_k()};
    arenaBytes_ = entry->arena_bytes();
    // The executors run the head over the rows whose logits a step reads,
    // moving its input rows first: nothing may read them after it.
    const art::Launch *head =
        entry->launches()->size() > 0
            ? entry->launches()->Get(entry->launches()->size() - 1)
            : nullptr;
    logits_ = entry->logits();
    headOut_ = head && head->args() && head->args()->size() > 0
                   ? head->args()->Get(head->args()->size() - 1)
                   : nullptr;
    otherEnd_ = 0;
    for (auto [ref, role] : {std::pair{entry->tokens(), "tokens"},
                             {entry->positions(), "positions"},
                             {entry->kv_lengths(), "kv_lengths"},
                             {entry->logits(), "logits"}})
      if (absl::Status s = checkRef(ref, role); !s.ok())
        return s;
    if (!isArena(entry->tokens(), art::ElementType::I32) ||
        !isTokenMajor(entry->tokens()) || rank(entry->tokens()) != 2 ||
        !sameShape(entry->tokens(), entry->positions()) ||
        entry->positions()->type() != art::ElementType::I32 ||
        rank(entry->kv_lengths()) != 1 ||
        entry->kv_lengths()->type() != art::ElementType::I32 ||
        entry->kv_lengths()->storage() != art::Storage::Arena ||
        dim(entry->kv_lengths(), 0).symbol() != art::DimSymbol::Batch ||
        !isArena(entry->logits(), art::ElementType::F32) ||
        rank(entry->logits()) != 3 || !isTokenMajor(entry->logits()) ||
        staticDim(entry->logits(), 2) != plan_.vocab_size())
      return fail("inputs must be tokens/positions [B,S] i32, kv_lengths "
                  "[B] i32; logits [B,S,vocab] f32");
    if (const art::TensorRef *rows = entry->cache_rows()) {
      if (absl::Status s = checkRef(rows, "cache_rows"); !s.ok())
        return s;
      if (!isArena(rows, art::ElementType::I32) ||
          !sameShape(rows, entry->positions()))
        return fail("cache_rows must be [B,S] i32 in the arena");
    }
    for (size_t i = 0; i < entry->launches()->size(); ++i) {
      const art::Launch *launch = entry->launches()->Get(i);
      where_ = "entry point " + entry->name()->str() + ", launch " +
               std::to_string(i) +
               (launch->name() ? " (" + launch->name()->str() + ")" : "") +
               ": ";
      if (absl::Status s = checkLaunch(*launch); !s.ok())
        return s;
    }
    where_ = "entry point " + entry->name()->str() + ": ";
    if (!head || head->kernel() != art::KernelKind::Logits ||
        headOut_->offset() != entry->logits()->offset())
      return fail("the last launch must be the output head (Logits), "
                  "writing the entry's logits");
    if (absl::Status s = checkFused(*entry); !s.ok())
      return s;
    if (absl::Status s = checkLinearGroups(*entry); !s.ok())
      return s;
    if (absl::Status s = checkRoutedReaders(*entry); !s.ok())
      return s;
    rowPerSequence_.push_back(
        std::max(otherEnd_, entry->logits()->offset() +
                                uint64_t{entry->max_batch()} *
                                    plan_.vocab_size() * sizeof(float)));
  }
  return absl::OkStatus();
}

absl::Status Verifier::checkLinearGroups(const art::EntryPoint &entry) {
  if (!entry.linear_groups())
    return absl::OkStatus();
  uint64_t end = 0;
  for (size_t i = 0; i < entry.linear_groups()->size(); ++i) {
    const art::LinearGroup *group = entry.linear_groups()->Get(i);
    where_ = "entry point " + entry.name()->str() + ", linear group " +
             std::to_string(i) + ": ";
    uint64_t first = group->first(), last = first + group->count();
    if (group->count() < 2 || group->count() > kLinearGroupMaxMembers ||
        first < end || last > entry.launches()->size())
      return fail("needs 2 to " + std::to_string(kLinearGroupMaxMembers) +
                  " launches after the previous group's");
    end = last;
    if (entry.fused())
      for (const art::FusedLaunch *fused : *entry.fused())
        if (first < uint64_t{fused->first()} + fused->count() &&
            fused->first() < last)
          return fail("overlaps a fused group");
    auto member = [&](uint64_t m) {
      return entry.launches()->Get(static_cast<flatbuffers::uoffset_t>(m));
    };
    const art::Launch &lead = *member(first);
    // The launches are verified on their own by now. One kernel runs the
    // members: one gatedness, weight type, activation type and FP8 block;
    // FP8 members may mix f32 activations (which the grouped GEMV
    // quantizes) with e4m3 codes.
    auto fp8Block = [](const art::Launch &l) {
      unsigned at = l.kernel() == art::KernelKind::GroupedLinear ? 0 : 1;
      std::vector<int64_t> block;
      if (l.ints() && l.ints()->size() == at + 3)
        block.assign(l.ints()->begin() + at, l.ints()->end());
      return block;
    };
    auto activations = [](const art::Launch &l) {
      art::ElementType x = l.args()->Get(0)->type();
      return l.args()->Get(1)->type() == art::ElementType::F8E4M3 &&
                     x == art::ElementType::F32
                 ? art::ElementType::F8E4M3
                 : x;
    };
    for (uint64_t m = first; m < last; ++m) {
      const art::Launch &l = *member(m);
      if (l.kernel() != art::KernelKind::Linear &&
          l.kernel() != art::KernelKind::GatedLinear &&
          l.kernel() != art::KernelKind::GroupedLinear)
        return fail("launch " + std::to_string(m) +
                    " is not a Linear, GatedLinear or GroupedLinear");
      bool gated = l.kernel() == art::KernelKind::GatedLinear;
      if (gated != (lead.kernel() == art::KernelKind::GatedLinear) ||
          activations(l) != activations(lead) ||
          l.args()->Get(1)->type() != lead.args()->Get(1)->type() ||
          fp8Block(l) != fp8Block(lead))
        return fail("launch " + std::to_string(m) +
                    " needs another kernel than launch " +
                    std::to_string(first) +
                    " (gatedness, weight or input type, FP8 block)");
    }
    // One kernel runs the members together.
    for (uint64_t m = first; m < last; ++m) {
      const art::Launch &l = *member(m);
      const art::TensorRef *out = l.args()->Get(l.args()->size() - 1);
      for (uint64_t other = first; other < last; ++other)
        if (other != m)
          for (const art::TensorRef *arg : *member(other)->args())
            if (overlap(out, arg))
              return fail("the result of launch " + std::to_string(m) +
                          " overlaps an argument of launch " +
                          std::to_string(other));
    }
  }
  return absl::OkStatus();
}

absl::Status Verifier::checkRoutedReaders(const art::EntryPoint &entry) {
  const auto &launches = *entry.launches();
  for (size_t i = 0; i < launches.size(); ++i) {
    const art::Launch &dispatch = *launches.Get(i);
    if (dispatch.kernel() != art::KernelKind::MoeDispatch ||
        dispatch.ints()->size() < 3)
      continue;
    where_ = "entry point " + entry.name()->str() + ", launch " +
             std::to_string(i) + ": ";
    auto same = [](const art::TensorRef *a, const art::TensorRef *b) {
      return a->storage() == art::Storage::Arena &&
             b->storage() == art::Storage::Arena &&
             a->offset() == b->offset() && a->type() == b->type();
    };
    for (size_t k = 2; k < dispatch.ints()->size(); ++k) {
      int64_t delta = dispatch.ints()->Get(k);
      if (delta < 1 || delta >= static_cast<int64_t>(launches.size() - i))
        return fail("kernel MoeDispatch: a routed-row reader " +
                    std::to_string(delta) +
                    " launches on is past the entry point's launches");
      size_t at = i + static_cast<size_t>(delta);
      const art::Launch &reader = *launches.Get(at);
      int offsets = -1;
      if (reader.kernel() == art::KernelKind::GroupedLinear)
        offsets = 2;
      else if (reader.kernel() == art::KernelKind::GatedLinear)
        offsets = GatedLinearArgs::of(reader, reader.args()->size()).offsets;
      bool fused = false;
      if (entry.fused())
        for (const art::FusedLaunch *group : *entry.fused())
          fused |= at >= group->first() && at < group->first() + group->count();
      if (offsets < 0 || fused ||
          !same(reader.args()->Get(0), dispatch.args()->Get(2)) ||
          !same(reader.args()->Get(offsets), dispatch.args()->Get(3)))
        return fail("kernel MoeDispatch: names a routed-row reader that is "
                    "not a grouped GEMM of its routed rows and offsets "
                    "outside the fused groups (launch " +
                    std::to_string(at) + ")");
    }
  }
  return absl::OkStatus();
}

absl::Status Verifier::checkFused(const art::EntryPoint &entry) {
  if (!entry.fused())
    return absl::OkStatus();
  uint64_t end = 0;
  for (size_t i = 0; i < entry.fused()->size(); ++i) {
    const art::FusedLaunch *group = entry.fused()->Get(i);
    where_ = "entry point " + entry.name()->str() + ", fused group " +
             std::to_string(i) + ": ";
    if (!group->kernel() || group->kernel()->size() == 0 || !group->args() ||
        group->args()->size() == 0 || group->count() == 0 ||
        group->first() < end ||
        uint64_t{group->first()} + group->count() > entry.launches()->size())
      return fail("needs a kernel name, arguments and launches after the "
                  "previous group's");
    end = uint64_t{group->first()} + group->count();
    where_ += group->kernel()->str() + ": ";
    const art::TensorRef *rows = entry.cache_rows();
    for (size_t a = 0; a < group->args()->size(); ++a) {
      const art::TensorRef *arg = group->args()->Get(a);
      if (absl::Status s = checkRef(arg, "argument"); !s.ok())
        return s;
      if (arg->storage() == art::Storage::KvCache)
        return fail("reads the KV cache (fused kernels read arena copies)");
      // A slot's rows follow the entry point's cache rows they are written
      // at.
      const art::TensorRef *before =
          a ? group->args()->Get(static_cast<flatbuffers::uoffset_t>(a - 1))
            : nullptr;
      if (arg->storage() == art::Storage::KvRows &&
          (!rows || !before || !isArena(before, art::ElementType::I32) ||
           before->offset() != rows->offset() || !sameShape(before, rows)))
        return fail("argument " + std::to_string(a) +
                    " writes a cache slot's rows but does not follow the "
                    "entry point's cache_rows");
    }
    // The last argument is a result: per token, in the arena.
    const art::TensorRef *result =
        group->args()->Get(group->args()->size() - 1);
    if (result->storage() != art::Storage::Arena ||
        dim(result, 0).symbol() == art::DimSymbol::Static)
      return fail("its last argument is not a per-token arena result");
    if (plan_.gpu_modules())
      for (const art::GpuModule *m : *plan_.gpu_modules()) {
        const art::GpuKernel *kernel = nullptr;
        for (const art::GpuKernel *k : *m->kernels())
          if (k->name()->string_view() == group->kernel()->string_view())
            kernel = k;
        if (!kernel || kernel->args() != group->args()->size())
          return fail("the " + m->arch()->str() +
                      " module has no kernel of that name taking " +
                      std::to_string(group->args()->size()) + " arguments");
      }
    // CPU modules may leave a group out (it then runs as its ops).
    if (plan_.host_modules())
      for (const art::HostModule *m : *plan_.host_modules())
        for (const art::HostKernel *k : *m->kernels())
          if (k->name()->string_view() == group->kernel()->string_view() &&
              k->args() != group->args()->size())
            return fail("the " + m->target()->str() +
                        " CPU module's kernel of that name does not take " +
                        std::to_string(group->args()->size()) + " arguments");
  }
  return absl::OkStatus();
}

} // namespace

const char *elementTypeName(art::ElementType type) {
  switch (type) {
  case art::ElementType::BF16:
    return "bf16";
  case art::ElementType::F16:
    return "f16";
  case art::ElementType::F8E4M3:
    return "f8e4m3";
  case art::ElementType::I32:
    return "i32";
  default:
    return "f32";
  }
}

uint64_t slotBytesPerToken(const art::KvSlot &slot) {
  uint64_t elements = 1;
  for (int64_t d : *slot.entry_shape())
    elements *= static_cast<uint64_t>(d);
  if (slot.packed())
    return cpu::PackedRowLayout{
        slot.fp8_columns(), static_cast<int64_t>(elements) - slot.fp8_columns()}
        .rowBytes();
  return elements * elementBytes(slot.type());
}

absl::Status verifyPlan(const art::Model &plan, const std::string &source,
                        std::vector<uint64_t> &arenaBytesRowPerSequence) {
  Verifier verifier(plan, source);
  if (absl::Status s = verifier.run(); !s.ok())
    return s;
  arenaBytesRowPerSequence = verifier.arenaBytesRowPerSequence();
  return absl::OkStatus();
}

} // namespace kiln::detail
