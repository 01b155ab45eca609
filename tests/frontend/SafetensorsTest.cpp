#include "frontend/Safetensors.h"

#include "TestUtil.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <fstream>

namespace kiln::frontend {
namespace {

using ::testing::ElementsAre;
using testing::errorOf;
using ::testing::HasSubstr;

constexpr DType kAllDTypes[] = {DType::F64,  DType::F32,     DType::F16,
                                DType::BF16, DType::F8_E4M3, DType::F8_E5M2,
                                DType::I64,  DType::I32,     DType::I16,
                                DType::I8,   DType::U8,      DType::BOOL};

/// A file image: the little-endian length of `header`, the header, then
/// `dataBytes` zero bytes.
std::vector<std::byte> craft(const std::string &header, size_t dataBytes = 0,
                             std::optional<uint64_t> length = std::nullopt) {
  uint64_t n = length.value_or(header.size());
  std::vector<std::byte> bytes;
  for (int i = 0; i < 8; ++i)
    bytes.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
  for (char c : header)
    bytes.push_back(static_cast<std::byte>(c));
  bytes.resize(bytes.size() + dataBytes);
  return bytes;
}

absl::StatusOr<SafetensorsHeader> parse(const std::string &header,
                                        size_t dataBytes = 0) {
  return parseSafetensorsHeader(craft(header, dataBytes), "t.safetensors");
}

std::vector<std::byte> pattern(size_t n, unsigned seed) {
  std::vector<std::byte> bytes(n);
  for (size_t i = 0; i < n; ++i)
    bytes[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
  return bytes;
}

void writeBytes(const std::filesystem::path &path,
                const std::vector<std::byte> &bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char *>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

TEST(DTypes, NamesAndSizes) {
  for (DType d : kAllDTypes)
    EXPECT_EQ(parseDType(dtypeName(d)), d) << dtypeName(d);
  EXPECT_EQ(parseDType("F8_E4M3"), DType::F8_E4M3);
  EXPECT_EQ(parseDType("f32"), std::nullopt);
  EXPECT_EQ(dtypeSize(DType::F64), 8);
  EXPECT_EQ(dtypeSize(DType::BF16), 2);
  EXPECT_EQ(dtypeSize(DType::F8_E5M2), 1);
  EXPECT_EQ(dtypeSize(DType::BOOL), 1);
  EXPECT_TRUE(isWeightFloat(DType::F8_E4M3));
  EXPECT_TRUE(isWeightFloat(DType::BF16));
  EXPECT_FALSE(isWeightFloat(DType::F64));
  EXPECT_FALSE(isWeightFloat(DType::F8_E5M2));
  EXPECT_FALSE(isWeightFloat(DType::I32));
}

TEST(SafetensorsRoundTrip, EveryDType) {
  std::filesystem::path path = testing::freshTempDir() / "all.safetensors";
  std::vector<std::vector<std::byte>> data;
  std::vector<TensorToWrite> tensors;
  for (DType d : kAllDTypes) {
    data.push_back(pattern(6 * dtypeSize(d), data.size()));
    tensors.push_back({std::string("t.") + std::string(dtypeName(d)),
                       d,
                       {2, 3},
                       data.back()});
  }
  // A scalar and an empty tensor too.
  data.push_back(pattern(4, 99));
  tensors.push_back({"scalar", DType::F32, {}, data.back()});
  tensors.push_back({"empty", DType::BF16, {0, 5}, {}});
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  ASSERT_TRUE(writeSafetensors(path, tensors, metadata).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), metadata);
  EXPECT_EQ((*file)->tensors().size(), tensors.size());
  for (const TensorToWrite &want : tensors) {
    const TensorInfo *got = (*file)->find(want.name);
    ASSERT_NE(got, nullptr) << want.name;
    EXPECT_EQ(got->dtype, want.dtype);
    EXPECT_EQ(got->shape, want.shape);
    std::span<const std::byte> bytes = (*file)->data(*got);
    EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), want.bytes.begin(),
                           want.bytes.end()))
        << want.name;
  }
  EXPECT_EQ((*file)->find("absent"), nullptr);
  EXPECT_EQ((*file)->find("scalar")->numElements(), 1);
  EXPECT_EQ((*file)->find("empty")->numElements(), 0);
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp." +
                                       std::to_string(::getpid())));
}

TEST(SafetensorsRoundTrip, HeaderPaddedToEightBytes) {
  std::filesystem::path path = testing::freshTempDir() / "pad.safetensors";
  std::vector<std::byte> bytes = pattern(2, 0);
  TensorToWrite tensor{"x", DType::U8, {2}, bytes};
  ASSERT_TRUE(writeSafetensors(path, std::span(&tensor, 1)).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 1u);
  std::ifstream in(path, std::ios::binary);
  unsigned char prefix[8];
  in.read(reinterpret_cast<char *>(prefix), 8);
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i)
    length = (length << 8) | prefix[i];
  EXPECT_EQ(length % 8, 0u);
  EXPECT_EQ(std::filesystem::file_size(path), 8 + length + 2);
}

TEST(SafetensorsWrite, SizeMismatchLeavesNoFile) {
  std::filesystem::path dir = testing::freshTempDir();
  std::vector<std::byte> bytes = pattern(20, 0);
  TensorToWrite tensor{"w", DType::F32, {2, 3}, bytes};
  absl::Status status =
      writeSafetensors(dir / "x.safetensors", std::span(&tensor, 1));
  EXPECT_THAT(errorOf(status),
              HasSubstr("x.safetensors: tensor 'w': has 20 bytes but dtype "
                        "F32 and shape [2,3] need 24"));
  EXPECT_TRUE(std::filesystem::is_empty(dir));
}

TEST(SafetensorsWrite, UnwritableDirectoryLeavesNoFile) {
  std::filesystem::path dir = testing::freshTempDir();
  std::vector<std::byte> bytes = pattern(4, 0);
  TensorToWrite tensor{"w", DType::F32, {1}, bytes};
  absl::Status status = writeSafetensors(dir / "missing" / "x.safetensors",
                                         std::span(&tensor, 1));
  EXPECT_THAT(errorOf(status), HasSubstr("cannot create"));
  EXPECT_TRUE(std::filesystem::is_empty(dir));
}

TEST(SafetensorsWrite, DuplicateName) {
  std::vector<std::byte> bytes = pattern(4, 0);
  TensorToWrite tensors[] = {{"w", DType::F32, {1}, bytes},
                             {"w", DType::F32, {1}, bytes}};
  EXPECT_THAT(errorOf(writeSafetensors(testing::freshTempDir() / "d", tensors)),
              HasSubstr("tensor 'w': written twice"));
}

TEST(SafetensorsParse, ValidHandCrafted) {
  std::string header =
      R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
      R"("__metadata__":{"k":"v"}})";
  absl::StatusOr<SafetensorsHeader> h = parse(header, 16);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->tensors[0].name, "a");
  EXPECT_EQ(h->tensors[1].name, "b");
  EXPECT_THAT(h->tensors[1].shape, ElementsAre(2));
  EXPECT_EQ(h->metadata.at("k"), "v");
  EXPECT_EQ(h->dataOffset, 8 + header.size());
}

TEST(SafetensorsParse, TooShortForLength) {
  std::vector<std::byte> bytes(5);
  EXPECT_THAT(errorOf(parseSafetensorsHeader(bytes, "t.safetensors")),
              HasSubstr("t.safetensors: file is 5 bytes, too short for the "
                        "8-byte header length"));
}

TEST(SafetensorsParse, HeaderLengthPastEndOfFile) {
  std::vector<std::byte> bytes = craft("{}", 0, 1000);
  EXPECT_THAT(errorOf(parseSafetensorsHeader(bytes, "t.safetensors")),
              HasSubstr("t.safetensors: header length 1000 runs past end of "
                        "file (size 10)"));
}

TEST(SafetensorsParse, HeaderLengthHuge) {
  std::vector<std::byte> bytes = craft("{}", 0, ~uint64_t{0});
  EXPECT_THAT(errorOf(parseSafetensorsHeader(bytes, "t.safetensors")),
              HasSubstr("header length 18446744073709551615 runs past end"));
}

TEST(SafetensorsParse, MalformedJson) {
  EXPECT_THAT(errorOf(parse(R"({"a": )")),
              HasSubstr("t.safetensors: malformed header JSON at byte 7 of the "
                        "header"));
}

TEST(SafetensorsParse, HeaderNotAnObject) {
  EXPECT_THAT(errorOf(parse("[1]")),
              HasSubstr("t.safetensors: header must be a JSON object, got "
                        "[1]"));
}

TEST(SafetensorsParse, BadDtype) {
  EXPECT_THAT(
      errorOf(parse(R"({"w":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}})",
                    4)),
      HasSubstr("t.safetensors: tensor 'w': unknown dtype \"F31\""));
}

TEST(SafetensorsParse, NegativeShape) {
  EXPECT_THAT(
      errorOf(parse(
          R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4)),
      HasSubstr("tensor 'w': shape must be an array of non-negative "
                "integers, got [-1]"));
}

TEST(SafetensorsParse, NonIntegerShape) {
  EXPECT_THAT(
      errorOf(parse(
          R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8)),
      HasSubstr("tensor 'w': shape must be an array of non-negative "
                "integers"));
}

TEST(SafetensorsParse, ShapeOverflow) {
  EXPECT_THAT(
      errorOf(parse(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],)"
                    R"("data_offsets":[0,4]}})",
                    4)),
      HasSubstr("tensor 'w': shape [4294967296,4294967296] of dtype F32 "
                "overflows"));
}

TEST(SafetensorsParse, SizeMismatch) {
  EXPECT_THAT(
      errorOf(parse(
          R"({"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 20)),
      HasSubstr("t.safetensors: tensor 'x': data_offsets span 20 bytes but "
                "dtype F32 and shape [2,3] need 24"));
}

TEST(SafetensorsParse, OffsetsReversed) {
  EXPECT_THAT(
      errorOf(
          parse(R"({"x":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", 4)),
      HasSubstr("tensor 'x': data_offsets must be [begin, end] with 0 <= "
                "begin <= end, got [4,0]"));
}

TEST(SafetensorsParse, OffsetsOutOfRange) {
  EXPECT_THAT(
      errorOf(parse(
          R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8)),
      HasSubstr("t.safetensors: tensor 'x': data_offsets [4,12] run past "
                "the 8-byte data section"));
}

TEST(SafetensorsParse, OverlappingOffsets) {
  EXPECT_THAT(
      errorOf(parse(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                    12)),
      HasSubstr("t.safetensors: tensors 'a' [0,8] and 'b' [4,12] overlap"));
}

TEST(SafetensorsParse, EmptyTensorsDoNotOverlap) {
  absl::StatusOr<SafetensorsHeader> h =
      parse(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
            8);
  EXPECT_TRUE(h.ok()) << h.status();
}

TEST(SafetensorsParse, UnknownTensorKey) {
  EXPECT_THAT(
      errorOf(parse(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],)"
                    R"("offset":3}})",
                    1)),
      HasSubstr("t.safetensors: tensor 'w': unknown key 'offset'"));
}

TEST(SafetensorsParse, MissingTensorKey) {
  EXPECT_THAT(errorOf(parse(R"({"w":{"dtype":"U8","shape":[1]}})", 1)),
              HasSubstr("tensor 'w': missing 'data_offsets'"));
}

TEST(SafetensorsParse, TensorEntryNotAnObject) {
  EXPECT_THAT(errorOf(parse(R"({"w":[1,2]})")),
              HasSubstr("tensor 'w': expected an object, got [1,2]"));
}

TEST(SafetensorsParse, BadMetadata) {
  EXPECT_THAT(errorOf(parse(R"({"__metadata__":{"format":1}})")),
              HasSubstr("t.safetensors: '__metadata__' must be an object of "
                        "string values, got {\"format\":1}"));
  EXPECT_THAT(errorOf(parse(R"({"__metadata__":"pt"})")),
              HasSubstr("'__metadata__' must be an object"));
}

TEST(SafetensorsOpen, EmptyFile) {
  std::filesystem::path path = testing::freshTempDir() / "empty.safetensors";
  writeBytes(path, {});
  EXPECT_THAT(errorOf(SafetensorsFile::open(path)),
              HasSubstr(path.string() + ": file is empty"));
}

TEST(SafetensorsOpen, MissingFile) {
  std::filesystem::path path = testing::freshTempDir() / "nope.safetensors";
  EXPECT_THAT(errorOf(SafetensorsFile::open(path)),
              HasSubstr("cannot open " + path.string()));
}

TEST(SafetensorsOpen, ErrorsNameThePath) {
  std::filesystem::path path = testing::freshTempDir() / "bad.safetensors";
  writeBytes(path, craft("{}", 0, 64));
  EXPECT_THAT(errorOf(SafetensorsFile::open(path)),
              HasSubstr(path.string() + ": header length 64 runs past end of "
                                        "file (size 10)"));
}

} // namespace
} // namespace kiln::frontend
