#include "frontend/Checkpoint.h"

#include "frontend/Support.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include <nlohmann/json.hpp>

#include <set>

namespace kiln::frontend {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr std::string_view kSingleFile = "model.safetensors";
constexpr std::string_view kIndexFile = "model.safetensors.index.json";

bool pathExists(const fs::path &path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

/// Shard names come from an untrusted file: they must name a file right
/// inside the checkpoint directory.
absl::Status checkShardName(const std::string &shard, const fs::path &dir) {
  if (shard.empty() || shard.find('/') != std::string::npos ||
      shard.find("..") != std::string::npos)
    return absl::InvalidArgumentError(
        detail::strCat("shard name '", shard, "' is not a plain file name"));
  if (!pathExists(dir / shard))
    return absl::NotFoundError(
        detail::strCat("shard '", shard, "' does not exist"));
  return absl::OkStatus();
}

/// `weight_map` of the index: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>>
readWeightMap(const fs::path &indexPath) {
  absl::StatusOr<std::string> text = detail::readFile(indexPath);
  if (!text.ok())
    return text.status();
  auto fail = [&](std::string_view message) {
    return absl::InvalidArgumentError(
        detail::strCat(indexPath.string(), ": ", message));
  };
  json root;
  try {
    root = json::parse(*text);
  } catch (const json::parse_error &e) {
    return fail(
        detail::strCat("malformed JSON at byte ", e.byte, ": ", e.what()));
  }
  auto weightMap = root.find("weight_map");
  if (weightMap == root.end() || !weightMap->is_object() || weightMap->empty())
    return fail("expected a non-empty 'weight_map' object");
  std::map<std::string, std::string> result;
  for (const auto &[name, shard] : weightMap->items()) {
    if (!shard.is_string())
      return fail(detail::strCat("tensor '", name,
                                 "': shard must be a file name string"));
    const auto &shardName = shard.get_ref<const std::string &>();
    if (absl::Status s = checkShardName(shardName, indexPath.parent_path());
        !s.ok())
      return fail(detail::strCat("tensor '", name, "': ", s.message()));
    result.emplace(name, shardName);
  }
  return result;
}

std::string fileName(const SafetensorsFile &file) {
  return file.path().filename().string();
}

std::string shapeString(const std::vector<int64_t> &shape) {
  return detail::strCat("[", absl::StrJoin(shape, ","), "]");
}

bool isIgnored(std::string_view name) {
  constexpr std::string_view kSuffix = "rotary_emb.inv_freq";
  return name.size() >= kSuffix.size() &&
         name.substr(name.size() - kSuffix.size()) == kSuffix;
}

void checkOne(const Checkpoint &checkpoint, const ExpectedTensor &want,
              std::vector<std::string> &problems) {
  std::optional<CheckpointTensor> got = checkpoint.find(want.name);
  if (!got) {
    problems.push_back(detail::strCat("missing tensor '", want.name,
                                      "' (expected in ",
                                      checkpoint.directory().string(), ")"));
    return;
  }
  std::string where =
      detail::strCat(fileName(*got->file), ": tensor '", want.name, "': ");
  if (got->info->shape != want.shape)
    problems.push_back(
        detail::strCat(where, "shape ", shapeString(got->info->shape),
                       " but the config needs ", shapeString(want.shape)));
  if (std::find(want.dtypes.begin(), want.dtypes.end(), got->info->dtype) ==
      want.dtypes.end())
    problems.push_back(
        detail::strCat(where, "dtype ", dtypeName(got->info->dtype),
                       " not allowed (expected one of ",
                       absl::StrJoin(want.dtypes, ", ",
                                     [](std::string *out, DType d) {
                                       detail::strAppend(out, dtypeName(d));
                                     }),
                       ")"));
}

} // namespace

bool Checkpoint::hasWeights(const fs::path &dir) {
  return pathExists(dir / kSingleFile) || pathExists(dir / kIndexFile);
}

absl::StatusOr<std::unique_ptr<Checkpoint>>
Checkpoint::open(const fs::path &dir) {
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  checkpoint->dir_ = dir;
  if (pathExists(dir / kIndexFile)) {
    if (absl::Status s = checkpoint->openSharded(); !s.ok())
      return s;
    return checkpoint;
  }
  if (pathExists(dir / kSingleFile)) {
    if (absl::Status s = checkpoint->addFile(dir / kSingleFile); !s.ok())
      return s;
    return checkpoint;
  }
  return absl::NotFoundError(detail::strCat("no ", kSingleFile, " or ",
                                            kIndexFile, " in ", dir.string()));
}

absl::Status Checkpoint::addFile(const fs::path &path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::open(path);
  if (!file.ok())
    return file.status();
  size_t fileIndex = files_.size();
  for (const TensorInfo &t : (*file)->tensors()) {
    auto [it, inserted] = index_.emplace(t.name, fileIndex);
    if (!inserted)
      return absl::InvalidArgumentError(detail::strCat(
          "tensor '", t.name, "' appears in both ",
          fileName(*files_[it->second]), " and ", fileName(**file)));
  }
  files_.push_back(std::move(*file));
  return absl::OkStatus();
}

absl::Status Checkpoint::openSharded() {
  fs::path indexPath = dir_ / kIndexFile;
  absl::StatusOr<std::map<std::string, std::string>> weightMap =
      readWeightMap(indexPath);
  if (!weightMap.ok())
    return weightMap.status();
  std::set<std::string> shards;
  for (const auto &[name, shard] : *weightMap)
    shards.insert(shard);
  for (const std::string &shard : shards)
    if (absl::Status s = addFile(dir_ / shard); !s.ok())
      return s;
  for (const auto &[name, shard] : *weightMap) {
    auto it = index_.find(name);
    if (it == index_.end() || fileName(*files_[it->second]) != shard)
      return absl::InvalidArgumentError(detail::strCat(
          indexPath.string(), ": tensor '", name, "' is listed in shard '",
          shard, "' but that file has no such tensor"));
  }
  for (const auto &[name, fileIndex] : index_)
    if (!weightMap->contains(name))
      return absl::InvalidArgumentError(
          detail::strCat(fileName(*files_[fileIndex]), ": tensor '", name,
                         "' is not listed in ", indexPath.string()));
  return absl::OkStatus();
}

std::optional<CheckpointTensor> Checkpoint::find(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    return std::nullopt;
  const SafetensorsFile &file = *files_[it->second];
  return CheckpointTensor{&file, file.find(name)};
}

std::vector<std::string> Checkpoint::tensorNames() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto &[name, fileIndex] : index_)
    names.push_back(name);
  return names;
}

absl::Status checkTensors(const Checkpoint &checkpoint,
                          std::span<const ExpectedTensor> expected) {
  std::vector<std::string> problems;
  std::set<std::string_view> expectedNames;
  for (const ExpectedTensor &want : expected) {
    expectedNames.insert(want.name);
    if (!isIgnored(want.name))
      checkOne(checkpoint, want, problems);
  }
  for (const std::string &name : checkpoint.tensorNames())
    if (!isIgnored(name) && !expectedNames.contains(name))
      problems.push_back(detail::strCat(fileName(*checkpoint.find(name)->file),
                                        ": unexpected tensor '", name, "'"));
  if (problems.empty())
    return absl::OkStatus();
  constexpr size_t kMaxLines = 20;
  size_t shown = std::min(problems.size(), kMaxLines);
  std::string message = detail::strCat(
      "checkpoint ", checkpoint.directory().string(),
      " does not match the "
      "model (",
      problems.size(), " problems):\n  ",
      absl::StrJoin(problems.begin(), problems.begin() + shown, "\n  "));
  if (problems.size() > shown)
    detail::strAppend(&message, "\n  and ", problems.size() - shown, " more");
  return absl::InvalidArgumentError(message);
}

} // namespace kiln::frontend
