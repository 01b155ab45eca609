#include "frontend/Checkpoint.h"

#include "TestUtil.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <fstream>

namespace kiln::frontend {
namespace {

using ::testing::ElementsAre;
using testing::errorOf;
using ::testing::HasSubstr;
using ::testing::Not;

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
};

/// Writes a safetensors file of zero-filled tensors.
void writeFile(const std::filesystem::path &path,
               const std::vector<Spec> &specs) {
  std::vector<std::vector<std::byte>> data;
  std::vector<TensorToWrite> tensors;
  data.reserve(specs.size());
  for (const Spec &s : specs) {
    int64_t n = dtypeSize(s.dtype);
    for (int64_t d : s.shape)
      n *= d;
    data.emplace_back(static_cast<size_t>(n));
    tensors.push_back({s.name, s.dtype, s.shape, data.back()});
  }
  absl::Status status = writeSafetensors(path, tensors);
  ASSERT_TRUE(status.ok()) << status;
}

void writeText(const std::filesystem::path &path, const std::string &text) {
  std::ofstream(path) << text;
}

/// Two shards, "a" in the first and "b" in the second, with an index saying
/// so (plus `extraIndex`, a JSON fragment of further weight_map entries).
std::filesystem::path shardedCheckpoint(const std::string &extraIndex = "") {
  std::filesystem::path dir = testing::freshTempDir();
  writeFile(dir / "model-00001-of-00002.safetensors", {{"a", {2, 2}}});
  writeFile(dir / "model-00002-of-00002.safetensors", {{"b", {3}}});
  writeText(dir / "model.safetensors.index.json",
            R"({"metadata":{"total_size":28},"weight_map":{)"
            R"("a":"model-00001-of-00002.safetensors",)"
            R"("b":"model-00002-of-00002.safetensors")" +
                extraIndex + "}}");
  return dir;
}

std::unique_ptr<Checkpoint> openOk(const std::filesystem::path &dir) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::open(dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  return checkpoint.ok() ? std::move(*checkpoint) : nullptr;
}

TEST(Checkpoint, SingleFile) {
  std::filesystem::path dir = testing::freshTempDir();
  writeFile(dir / "model.safetensors", {{"w", {4, 2}}, {"v", {3}}});
  EXPECT_TRUE(Checkpoint::hasWeights(dir));
  std::unique_ptr<Checkpoint> checkpoint = openOk(dir);
  ASSERT_NE(checkpoint, nullptr);
  EXPECT_EQ(checkpoint->directory(), dir);
  EXPECT_THAT(checkpoint->tensorNames(), ElementsAre("v", "w"));
  std::optional<CheckpointTensor> w = checkpoint->find("w");
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->file->path(), dir / "model.safetensors");
  EXPECT_THAT(w->info->shape, ElementsAre(4, 2));
  EXPECT_EQ(w->file->data(*w->info).size(), 32u);
  EXPECT_FALSE(checkpoint->find("x").has_value());
}

TEST(Checkpoint, Sharded) {
  std::filesystem::path dir = shardedCheckpoint();
  EXPECT_TRUE(Checkpoint::hasWeights(dir));
  std::unique_ptr<Checkpoint> checkpoint = openOk(dir);
  ASSERT_NE(checkpoint, nullptr);
  EXPECT_THAT(checkpoint->tensorNames(), ElementsAre("a", "b"));
  EXPECT_EQ(checkpoint->find("a")->file->path().filename(),
            "model-00001-of-00002.safetensors");
  EXPECT_EQ(checkpoint->find("b")->file->path().filename(),
            "model-00002-of-00002.safetensors");
}

TEST(Checkpoint, NoWeights) {
  std::filesystem::path dir = testing::freshTempDir();
  EXPECT_FALSE(Checkpoint::hasWeights(dir));
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr("no model.safetensors or model.safetensors.index.json "
                        "in " +
                        dir.string()));
}

TEST(Checkpoint, IndexNamesMissingShard) {
  std::filesystem::path dir =
      shardedCheckpoint(R"(,"c":"model-00003-of-00002.safetensors")");
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr((dir / "model.safetensors.index.json").string() +
                        ": tensor 'c': shard "
                        "'model-00003-of-00002.safetensors' does not exist"));
}

TEST(Checkpoint, IndexShardNameEscapesDirectory) {
  std::filesystem::path dir = shardedCheckpoint(R"(,"c":"../x.safetensors")");
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr("model.safetensors.index.json: tensor 'c': shard name "
                        "'../x.safetensors' is not a plain file name"));
  dir = shardedCheckpoint(R"(,"c":"sub/x.safetensors")");
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr("tensor 'c': shard name 'sub/x.safetensors' is not a "
                        "plain file name"));
}

TEST(Checkpoint, IndexTensorAbsentFromShard) {
  std::filesystem::path dir =
      shardedCheckpoint(R"(,"c":"model-00001-of-00002.safetensors")");
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr("model.safetensors.index.json: tensor 'c' is listed in "
                        "shard 'model-00001-of-00002.safetensors' but that "
                        "file has no such tensor"));
}

TEST(Checkpoint, ShardTensorNotInIndex) {
  std::filesystem::path dir = shardedCheckpoint();
  writeFile(dir / "model-00002-of-00002.safetensors", {{"b", {3}}, {"z", {1}}});
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr("model-00002-of-00002.safetensors: tensor 'z' is not "
                        "listed in " +
                        (dir / "model.safetensors.index.json").string()));
}

TEST(Checkpoint, DuplicateTensorAcrossShards) {
  std::filesystem::path dir = shardedCheckpoint();
  writeFile(dir / "model-00002-of-00002.safetensors", {{"b", {3}}, {"a", {1}}});
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr("tensor 'a' appears in both "
                        "model-00001-of-00002.safetensors and "
                        "model-00002-of-00002.safetensors"));
}

TEST(Checkpoint, MalformedIndex) {
  std::filesystem::path dir = testing::freshTempDir();
  writeText(dir / "model.safetensors.index.json", R"({"weight_map": [}")");
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr("model.safetensors.index.json: malformed JSON at "
                        "byte"));
  writeText(dir / "model.safetensors.index.json", R"({"weights": {}})");
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr("model.safetensors.index.json: expected a non-empty "
                        "'weight_map' object"));
}

TEST(Checkpoint, BadShardFileNamesIt) {
  std::filesystem::path dir = shardedCheckpoint();
  writeText(dir / "model-00002-of-00002.safetensors", "garbage");
  EXPECT_THAT(errorOf(Checkpoint::open(dir)),
              HasSubstr("model-00002-of-00002.safetensors: file is 7 bytes"));
}

class CheckTensors : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = testing::freshTempDir();
    writeFile(dir_ / "model.safetensors",
              {{"model.norm.weight", {32}, DType::BF16},
               {"model.layers.0.mlp.up_proj.weight", {64, 32}, DType::BF16},
               {"model.layers.0.self_attn.rotary_emb.inv_freq", {8}}});
    checkpoint_ = openOk(dir_);
    ASSERT_NE(checkpoint_, nullptr);
  }

  absl::Status check(const std::vector<ExpectedTensor> &expected) {
    return checkTensors(*checkpoint_, expected);
  }

  const std::vector<DType> floats_ = {DType::F32, DType::BF16, DType::F16};
  std::filesystem::path dir_;
  std::unique_ptr<Checkpoint> checkpoint_;
};

TEST_F(CheckTensors, Match) {
  absl::Status status =
      check({{"model.norm.weight", {32}, floats_},
             {"model.layers.0.mlp.up_proj.weight", {64, 32}, floats_}});
  EXPECT_TRUE(status.ok()) << status;
}

TEST_F(CheckTensors, Missing) {
  absl::Status status =
      check({{"model.norm.weight", {32}, floats_},
             {"model.layers.0.mlp.up_proj.weight", {64, 32}, floats_},
             {"lm_head.weight", {10, 32}, floats_}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(errorOf(status), HasSubstr("missing tensor 'lm_head.weight' "
                                         "(expected in " +
                                         dir_.string() + ")"));
}

TEST_F(CheckTensors, Unexpected) {
  EXPECT_THAT(errorOf(check({{"model.norm.weight", {32}, floats_}})),
              HasSubstr("model.safetensors: unexpected tensor "
                        "'model.layers.0.mlp.up_proj.weight'"));
}

TEST_F(CheckTensors, RotaryInvFreqIgnored) {
  EXPECT_THAT(errorOf(check({{"model.norm.weight", {32}, floats_}})),
              Not(HasSubstr("inv_freq")));
}

TEST_F(CheckTensors, ShapeMismatch) {
  EXPECT_THAT(
      errorOf(
          check({{"model.norm.weight", {32}, floats_},
                 {"model.layers.0.mlp.up_proj.weight", {128, 32}, floats_}})),
      HasSubstr("model.safetensors: tensor "
                "'model.layers.0.mlp.up_proj.weight': shape [64,32] but the "
                "config needs [128,32]"));
}

TEST_F(CheckTensors, DTypeMismatch) {
  EXPECT_THAT(errorOf(check(
                  {{"model.norm.weight", {32}, {DType::F32}},
                   {"model.layers.0.mlp.up_proj.weight", {64, 32}, floats_}})),
              HasSubstr("model.safetensors: tensor 'model.norm.weight': dtype "
                        "BF16 not allowed (expected one of F32)"));
}

TEST_F(CheckTensors, ReportsEveryProblemUpToALimit) {
  std::vector<ExpectedTensor> expected = {{"model.norm.weight", {31}, floats_}};
  for (int i = 0; i < 25; ++i)
    expected.push_back({"missing." + std::to_string(i), {1}, floats_});
  std::string message = errorOf(check(expected));
  EXPECT_THAT(message, HasSubstr("(27 problems)"));
  EXPECT_THAT(message, HasSubstr("shape [32] but the config needs [31]"));
  EXPECT_THAT(message, HasSubstr("missing tensor 'missing.18'"));
  EXPECT_THAT(message, Not(HasSubstr("missing tensor 'missing.19'")));
  EXPECT_THAT(message, HasSubstr("and 7 more"));
}

} // namespace
} // namespace kiln::frontend
