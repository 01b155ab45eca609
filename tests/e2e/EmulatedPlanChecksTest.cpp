// Plans the verifier must refuse at load (PlanVerifier.cpp), edited from
// DeepSeek-V3's golden artifact: linear groups, fused cache stores, packed
// latent slots, launch attributes, MoE selection rows and the combine's
// reads, each with a message that names what is wrong.
#include "tests/e2e/E2eUtil.h"
#include "tests/e2e/EmulatedGpuUtil.h"

#include "kiln/Runtime.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

namespace kiln {
namespace {

using testing::compileAndOpen;
using testing::compileArtifact;
using testing::CompileSettings;
using testing::kGolden;
using testing::scratchFile;

/// DeepSeek-V3's golden compiled with `settings` (whose editPlan breaks
/// the plan) to `name`: the plan verifier must reject it at load with a
/// message that says each of `what`.
void expectRejectedAtLoad(const std::string &name,
                          const CompileSettings &settings,
                          std::initializer_list<std::string> what) {
  std::filesystem::path artifact =
      compileArtifact(kGolden / "deepseek-v3", scratchFile(name), settings);
  ASSERT_FALSE(artifact.empty());
  absl::StatusOr<std::unique_ptr<Model>> model = Model::open(artifact);
  ASSERT_FALSE(model.ok()) << name;
  std::string message(model.status().message());
  for (const std::string &part : what)
    EXPECT_NE(message.find(part), std::string::npos) << message;
}

/// An artifact of DeepSeek-V3 (q_a_proj and kv_a_proj_with_mqa grouped)
/// whose linear groups `edit` changes (given the first entry point that has
/// some, and its first), which the plan verifier must reject at load,
/// saying `why`.
void expectLinearGroupRejected(
    const std::string &name,
    const std::function<void(artifact::EntryPointT &, artifact::LinearGroupT &)>
        &edit,
    const std::string &why) {
  CompileSettings settings;
  settings.editPlan = [&](artifact::ModelT &plan) {
    for (auto &entry : plan.entry_points)
      if (!entry->linear_groups.empty()) {
        edit(*entry, *entry->linear_groups.front());
        return;
      }
    ADD_FAILURE() << "no linear group";
  };
  expectRejectedAtLoad(name, settings, {"linear group ", why});
}

TEST(EmulatedGpuSession, MalformedLinearGroupsAreRejected) {
  using Entry = artifact::EntryPointT;
  using Group = artifact::LinearGroupT;
  expectLinearGroupRejected(
      "linears_one.kiln", [](Entry &, Group &g) { g.count = 1; },
      "needs 2 to 4 launches");
  expectLinearGroupRejected(
      "linears_past_end.kiln",
      [](Entry &e, Group &g) {
        g.first = static_cast<uint32_t>(e.launches.size() - 1);
      },
      "needs 2 to 4 launches");
  // A group that starts right after a fused group (a layer's norm) taking
  // that group's last launch.
  expectLinearGroupRejected(
      "linears_fused.kiln",
      [](Entry &e, Group &) {
        for (auto &g : e.linear_groups)
          for (auto &f : e.fused)
            if (f->first + f->count == g->first) {
              g->first -= 1;
              return;
            }
        ADD_FAILURE() << "no linear group after a fused group";
      },
      "overlaps a fused group");
  expectLinearGroupRejected(
      "linears_not_linear.kiln", [](Entry &, Group &g) { g.count += 1; },
      "is not a Linear");
  // A MoE layer's gated pair (routed and shared experts) taking the next
  // launch, a plain GEMM.
  expectLinearGroupRejected(
      "linears_other_kernel.kiln",
      [](Entry &e, Group &) {
        for (auto &g : e.linear_groups)
          if (e.launches[g->first]->kernel ==
              artifact::KernelKind::GatedLinear) {
            g->count += 1;
            return;
          }
        ADD_FAILURE() << "no gated linear group";
      },
      "needs another kernel than launch");
  // The second member writes where the first writes.
  expectLinearGroupRejected(
      "linears_aliased.kiln",
      [](Entry &e, Group &g) {
        auto &out = e.launches[g.first + 1]->args.back();
        out->offset = e.launches[g.first]->args.back()->offset;
      },
      "overlaps an argument of launch");
}

/// An artifact of DeepSeek-V3 whose first fused group that stores cache
/// rows, and its entry point, `edit` changes; the plan verifier must reject
/// it at load, saying `why`.
void expectCacheRowsRejected(
    const std::string &name,
    const std::function<void(artifact::EntryPointT &, artifact::FusedLaunchT &,
                             size_t slotArg)> &edit,
    const std::string &why) {
  CompileSettings settings;
  settings.editPlan = [&](artifact::ModelT &plan) {
    for (auto &entry : plan.entry_points)
      for (auto &fused : entry->fused)
        for (size_t a = 0; a < fused->args.size(); ++a)
          if (fused->args[a]->storage == artifact::Storage::KvRows) {
            edit(*entry, *fused, a);
            return;
          }
    ADD_FAILURE() << "no fused group stores cache rows";
  };
  expectRejectedAtLoad(name, settings, {why});
}

TEST(EmulatedGpuSession, MalformedCacheRowsAreRejected) {
  using Entry = artifact::EntryPointT;
  using Fused = artifact::FusedLaunchT;
  expectCacheRowsRejected(
      "rows_missing.kiln",
      [](Entry &e, Fused &, size_t) { e.cache_rows.reset(); },
      "does not follow the entry point's cache_rows");
  // The slot's rows after the positions instead of the cache rows.
  expectCacheRowsRejected(
      "rows_not_before.kiln",
      [](Entry &e, Fused &f, size_t a) {
        f.args[a - 1]->offset = e.positions->offset;
      },
      "does not follow the entry point's cache_rows");
  expectCacheRowsRejected(
      "rows_shape.kiln",
      [](Entry &e, Fused &, size_t) { e.cache_rows->shape.pop_back(); },
      "cache_rows must be [B,S] i32 in the arena");
  expectCacheRowsRejected(
      "rows_slot_width.kiln",
      [](Entry &, Fused &f, size_t a) {
        f.args[a]->shape.back() = artifact::Dim(artifact::DimSymbol::Static, 8);
      },
      "is not the rows of cache slot");
  expectCacheRowsRejected(
      "rows_slot_index.kiln",
      [](Entry &, Fused &f, size_t a) { f.args[a]->index = 1000; },
      "names cache slot 1000");
  // A plain kv_append writing the slot's rows in place of its value.
  expectCacheRowsRejected(
      "rows_in_launch.kiln",
      [](Entry &e, Fused &f, size_t a) {
        for (auto &l : e.launches)
          if (l->kernel == artifact::KernelKind::KvAppend) {
            l->args[0] = std::make_unique<artifact::TensorRefT>(*f.args[a]);
            return;
          }
      },
      "which only fused kernels write");
}

/// DeepSeek-V3 absorbed with a bf16 latent cache whose latent slots `edit`
/// changes; the plan verifier must reject it at load, saying `why`.
void expectPackedSlotsRejected(
    const std::string &name,
    const std::function<void(artifact::KvSlotT &)> &edit,
    const std::string &why) {
  CompileSettings settings;
  settings.optimize.mla = "absorbed";
  settings.optimize.latentCacheDtype = "bf16";
  settings.editPlan = [&](artifact::ModelT &plan) {
    ASSERT_FALSE(plan.kv_slots.empty());
    for (auto &slot : plan.kv_slots) {
      ASSERT_TRUE(slot->packed) << slot->name;
      edit(*slot);
    }
  };
  expectRejectedAtLoad(name, settings, {why});
}

TEST(EmulatedGpuSession, MalformedPackedSlotsAreRejected) {
  using Slot = artifact::KvSlotT;
  expectPackedSlotsRejected(
      "packed_too_wide.kiln", [](Slot &s) { s.fp8_columns = 600; },
      "has a packed row that does not fit a [1, n] entry");
  expectPackedSlotsRejected(
      "packed_negative.kiln", [](Slot &s) { s.fp8_columns = -1; },
      "has a packed row that does not fit a [1, n] entry");
  // FP8 columns on an f32 slot.
  expectPackedSlotsRejected(
      "packed_fp8_unpacked.kiln",
      [](Slot &s) {
        s.packed = false;
        s.fp8_columns = 16;
      },
      "or FP8 columns without one");
  // Read as f32 rows: the fused kernels' stores of packed bytes no longer
  // match the slot.
  expectPackedSlotsRejected(
      "packed_as_f32.kiln", [](Slot &s) { s.packed = false; },
      "is not the rows of cache slot");
}

/// A launch of `kind` the plan verifier rejects at load, naming the
/// kernel: `edit` applied to the first one (DeepSeek-V3, absorbed MLA).
void expectLaunchRejected(artifact::KernelKind kind, const std::string &name,
                          const std::function<void(artifact::LaunchT &)> &edit,
                          const std::string &why) {
  CompileSettings settings;
  settings.optimize.mla = "absorbed";
  settings.editPlan = [&](artifact::ModelT &plan) {
    for (auto &entry : plan.entry_points)
      for (auto &launch : entry->launches)
        if (launch->kernel == kind) {
          edit(*launch);
          return;
        }
    ADD_FAILURE() << "no " << artifact::EnumNameKernelKind(kind) << " launch";
  };
  expectRejectedAtLoad(name, settings,
                       {std::string("kernel ") +
                        artifact::EnumNameKernelKind(kind) + ": " + why});
}

void expectGatedLinearRejected(
    const std::string &name,
    const std::function<void(artifact::LaunchT &)> &edit,
    const std::string &why) {
  expectLaunchRejected(artifact::KernelKind::GatedLinear, name, edit, why);
}

// The executors run the output head over the rows a step reads, moving its
// input rows first: a plan in which a launch follows the head is rejected.
TEST(EmulatedGpuSession, PlansEndWithTheOutputHead) {
  CompileSettings settings;
  settings.editPlan = [](artifact::ModelT &plan) {
    auto &launches = plan.entry_points.front()->launches;
    ASSERT_GE(launches.size(), 2u);
    std::swap(launches[launches.size() - 1], launches[launches.size() - 2]);
  };
  expectRejectedAtLoad("head_not_last.kiln", settings,
                       {"the last launch must be the output head"});
}

// A head GEMM's input columns past its input's rows.
TEST(EmulatedGpuSession, HeadLinearInputColumnsAreVerified) {
  expectLaunchRejected(
      artifact::KernelKind::HeadLinear, "head_offset.kiln",
      [](artifact::LaunchT &l) { l.ints[0] = 9; },
      "input columns out of the input's rows");
}

TEST(EmulatedGpuSession, MalformedGatedLinearLaunchesAreRejected) {
  expectGatedLinearRejected(
      "gated_no_result.kiln", [](artifact::LaunchT &l) { l.args.pop_back(); },
      "wrong number of operands");
  expectGatedLinearRejected(
      "gated_grouped_flag.kiln", [](artifact::LaunchT &l) { l.ints[0] = 2; },
      "wrong number of operands");
  // The up weight replaced by the input (an arena tensor).
  expectGatedLinearRejected(
      "gated_up_not_a_weight.kiln",
      [](artifact::LaunchT &l) {
        l.args[2] = std::make_unique<artifact::TensorRefT>(*l.args[0]);
      },
      "expects gate and up weights");
  // The result narrower than the weights' rows.
  expectGatedLinearRejected(
      "gated_result_width.kiln",
      [](artifact::LaunchT &l) {
        artifact::Dim &last = l.args.back()->shape.back();
        last = artifact::Dim(last.symbol(), last.size() - 1);
      },
      "expects x [..., in] and y [..., out]");
}

// A combine reading the dispatch's slots ([R]) where its selection rows
// ([B, S, k]) belong, as a format-2 plan did, and a dispatch that writes no
// selection rows.
TEST(EmulatedGpuSession, MoeSelectionRowsAreVerified) {
  expectLaunchRejected(
      artifact::KernelKind::MoeCombine, "combine_slots.kiln",
      [](artifact::LaunchT &l) {
        auto &rows = l.args[2];
        rows->shape.erase(rows->shape.begin() + 1, rows->shape.end());
        rows->shape[0] = artifact::Dim(artifact::DimSymbol::RoutedRows, 0);
      },
      "expects y [R,D], weights [B,S,k], selection rows [B,S,k]");
  expectLaunchRejected(
      artifact::KernelKind::MoeDispatch, "dispatch_no_rows.kiln",
      [](artifact::LaunchT &l) { l.args.pop_back(); },
      "wrong number of operands");
  // Skippable, but no reader named; readers named, but not skippable.
  expectLaunchRejected(
      artifact::KernelKind::MoeDispatch, "dispatch_no_readers.kiln",
      [](artifact::LaunchT &l) { l.ints.resize(2); },
      "wrong number of operands or attributes");
  expectLaunchRejected(
      artifact::KernelKind::MoeDispatch, "dispatch_not_skippable.kiln",
      [](artifact::LaunchT &l) { l.ints[1] = 0; },
      "wrong number of operands or attributes");
  // A reader past the launches, and one that is not a GEMM of the routed
  // rows (the launch before the gated GEMM: the gate, or the shared
  // expert's GEMM of a linear group).
  expectLaunchRejected(
      artifact::KernelKind::MoeDispatch, "dispatch_reader_past_end.kiln",
      [](artifact::LaunchT &l) { l.ints[2] = 100000; },
      "a routed-row reader 100000 launches on is past the entry point's "
      "launches");
  expectLaunchRejected(
      artifact::KernelKind::MoeDispatch, "dispatch_reader_other.kiln",
      [](artifact::LaunchT &l) { l.ints[2] += 1; },
      "names a routed-row reader that is not a grouped GEMM of its routed "
      "rows and offsets outside the fused groups");
}

// A combine whose selection rows are another [B, S, k] tensor (the router's
// expert indices) passes the plan verifier; the CPU and CUDA executors,
// which take them as row indices, run only the rows the last dispatch
// wrote.
TEST(EmulatedGpuSession, CombineReadsOnlyTheDispatchsSelectionRows) {
  CompileSettings settings;
  settings.optimize.fuse = false;
  settings.editPlan = [](artifact::ModelT &plan) {
    for (auto &entry : plan.entry_points) {
      const artifact::TensorRefT *indices = nullptr;
      for (auto &launch : entry->launches)
        if (launch->kernel == artifact::KernelKind::MoeDispatch)
          indices = launch->args[1].get();
        else if (launch->kernel == artifact::KernelKind::MoeCombine && indices)
          launch->args[2] = std::make_unique<artifact::TensorRefT>(*indices);
    }
  };
  std::unique_ptr<Model> model = compileAndOpen(
      kGolden / "deepseek-v3", scratchFile("combine_indices.kiln"), settings);
  ASSERT_TRUE(model);
  for (Device device : {Device::Cpu, Device::Emulated}) {
    SessionOptions options;
    options.device = device;
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(*model, options);
    ASSERT_TRUE(session.ok()) << session.status().message();
    absl::StatusOr<std::vector<int>> ids = (*session)->prefill({{5, 17, 3}});
    ASSERT_FALSE(ids.ok());
    EXPECT_NE(ids.status().message().find("the combine reads selection rows "
                                          "no dispatch before it wrote"),
              std::string::npos)
        << ids.status().message();
  }
}

} // namespace
} // namespace kiln
