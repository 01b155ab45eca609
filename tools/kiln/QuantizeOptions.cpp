//===- QuantizeOptions.cpp - FP8 options of compile-model and inspect -----===//
#include "tools/kiln/QuantizeOptions.h"

#include "ir/KilnOps.h"

#include <cstdio>

namespace kiln::tools {

void addQuantizeOptions(CLI::App &app, QuantizeFlags &flags) {
  app.add_option("--quantize", flags.quantize,
                 "Weight quantization: fp8 (e4m3, 128x128 block scales, "
                 "DeepSeek-V3's recipe), none, or auto (an FP8 checkpoint as "
                 "shipped, others unquantized)")
      ->check(CLI::IsMember({"auto", "none", "fp8"}))
      ->capture_default_str();
  app.add_option("--quantize-keep", flags.keep,
                 "Keep parameters whose name matches this glob pattern in "
                 "their checkpoint precision (repeatable)");
  app.add_option("--quantize-keep-ops", flags.keepOps,
                 "Keep every GEMM of this kind in its checkpoint precision "
                 "(repeatable)")
      ->check(CLI::IsMember({"linear", "grouped_linear", "head_linear"}));
  app.add_flag("--ue8m0", flags.ue8m0,
               "Power-of-two (UE8M0) FP8 scales for weights and activations");
  app.add_option("--kv-cache-dtype", flags.kvCacheDtype,
                 "MLA latent cache storage: f32, bf16, or fp8 (c_kv as e4m3 "
                 "with a scale per 128 values, the RoPE key as bf16)")
      ->check(CLI::IsMember({"f32", "bf16", "fp8"}))
      ->capture_default_str();
}

absl::Status applyQuantizeFlags(const QuantizeFlags &flags,
                                const frontend::ModelConfig &config,
                                mlir::kiln::OptimizeOptions &optimize) {
  bool nativeFp8 = config.quantization.has_value();
  if (flags.quantize == "none" && nativeFp8)
    return absl::InvalidArgumentError(
        config.sourceName + ": the checkpoint is FP8 (quantization_config); "
                            "--quantize=none cannot undo that");
  optimize.quantizeFp8 =
      flags.quantize == "fp8" || (flags.quantize == "auto" && nativeFp8);
  if (!optimize.quantizeFp8 &&
      (flags.ue8m0 || !flags.keep.empty() || !flags.keepOps.empty()))
    return absl::InvalidArgumentError(
        "--ue8m0 and --quantize-keep* need --quantize=fp8");
  optimize.ue8m0 = flags.ue8m0;
  // A native FP8 checkpoint runs as shipped unless asked for more.
  optimize.checkpointOnly = flags.quantize == "auto" && nativeFp8;
  optimize.keepPatterns = flags.keep;
  optimize.keepOps = flags.keepOps;
  optimize.latentCacheDtype = flags.kvCacheDtype;
  return absl::OkStatus();
}

absl::Status checkKvCacheDtype(const QuantizeFlags &flags,
                               mlir::ModuleOp module,
                               const std::string &model) {
  if (flags.kvCacheDtype == "f32")
    return absl::OkStatus();
  bool packed = false;
  module.walk([&](mlir::kiln::KVCacheOp slot) {
    packed |= static_cast<bool>(slot.getStorageAttr());
  });
  if (packed)
    return absl::OkStatus();
  return absl::InvalidArgumentError(
      model + ": --kv-cache-dtype=" + flags.kvCacheDtype +
      " stores the MLA latent cache in " + flags.kvCacheDtype +
      ", and this model has none (not an MLA model, or --mla=naive)");
}

int64_t WeightBytes::total() const {
  int64_t sum = scales;
  for (const auto &[type, bytes] : byType)
    sum += bytes;
  return sum;
}

WeightBytes weightBytes(mlir::ModuleOp module) {
  // Block scales are the f32 operands FP8 GEMMs take as `scale`.
  llvm::DenseSet<llvm::StringRef> scales;
  module.walk([&](mlir::Operation *op) {
    llvm::SmallVector<mlir::Value, 2> scale;
    if (auto l = llvm::dyn_cast<mlir::kiln::LinearOp>(op))
      scale = {l.getWeightScale()};
    else if (auto g = llvm::dyn_cast<mlir::kiln::GroupedLinearOp>(op))
      scale = {g.getWeightScale()};
    else if (auto h = llvm::dyn_cast<mlir::kiln::HeadLinearOp>(op))
      scale = {h.getWeightScale()};
    else if (auto gated = llvm::dyn_cast<mlir::kiln::GatedLinearOp>(op))
      scale = {gated.getGateScale(), gated.getUpScale()};
    for (mlir::Value s : scale) {
      // A grouped linear's scale is its group's operand.
      if (auto arg = llvm::dyn_cast_if_present<mlir::BlockArgument>(s))
        if (auto group = llvm::dyn_cast<mlir::kiln::LinearGroupOp>(
                arg.getOwner()->getParentOp()))
          s = group.getInputs()[arg.getArgNumber()];
      if (auto get = s ? s.getDefiningOp<mlir::kiln::GetParameterOp>()
                       : mlir::kiln::GetParameterOp())
        scales.insert(get.getName());
    }
  });
  WeightBytes bytes;
  module.walk([&](mlir::kiln::ParameterOp param) {
    mlir::RankedTensorType type = param.getTensorType();
    int64_t n = type.getNumElements() * type.getElementTypeBitWidth() / 8;
    if (scales.contains(param.getSymName())) {
      bytes.scales += n;
      return;
    }
    std::string name;
    llvm::raw_string_ostream os(name);
    os << type.getElementType();
    bytes.byType[os.str()] += n;
  });
  return bytes;
}

void printWeightReport(std::ostream &os, const WeightBytes &before,
                       const WeightBytes &after) {
  std::map<std::string, std::pair<int64_t, int64_t>> rows;
  for (const auto &[type, n] : before.byType)
    rows[type].first = n;
  for (const auto &[type, n] : after.byType)
    rows[type].second = n;
  char line[160];
  os << "weight bytes (before -> after optimize):\n";
  for (const auto &[type, n] : rows) {
    std::snprintf(line, sizeof(line), "  %-14s %16lld -> %16lld\n",
                  type.c_str(), static_cast<long long>(n.first),
                  static_cast<long long>(n.second));
    os << line;
  }
  std::snprintf(line, sizeof(line), "  %-14s %16lld -> %16lld\n",
                "scales (f32)", static_cast<long long>(before.scales),
                static_cast<long long>(after.scales));
  os << line;
  std::snprintf(line, sizeof(line), "  %-14s %16lld -> %16lld (%.3fx)\n",
                "total", static_cast<long long>(before.total()),
                static_cast<long long>(after.total()),
                after.total() ? static_cast<double>(before.total()) /
                                    static_cast<double>(after.total())
                              : 0.0);
  os << line;
  auto fp8 = after.byType.find("f8E4M3FN");
  if (fp8 != after.byType.end() && fp8->second > 0) {
    // Full 128x128 blocks cost 4 bytes of scale per 16384 weight bytes.
    std::snprintf(line, sizeof(line),
                  "  scale overhead: %.4f%% of FP8 weight bytes (full "
                  "128x128 blocks: %.4f%%)\n",
                  100.0 * static_cast<double>(after.scales) /
                      static_cast<double>(fp8->second),
                  100.0 * 4.0 / 16384.0);
    os << line;
  }
}

} // namespace kiln::tools
