#include "frontend/Safetensors.h"

#include "frontend/Support.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kiln::frontend {

namespace {

using json = nlohmann::json;

// The same bound the reference implementation puts on the header, so a
// corrupt length cannot make us parse an absurd amount of JSON.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::string shapeString(const std::vector<int64_t> &shape) {
  return detail::strCat("[", absl::StrJoin(shape, ","), "]");
}

/// numel * dtypeSize, or nullopt when a dimension is negative or the product
/// overflows int64.
std::optional<int64_t> byteSize(DType dtype,
                                const std::vector<int64_t> &shape) {
  int64_t bytes = dtypeSize(dtype);
  for (int64_t dim : shape)
    if (dim < 0 || __builtin_mul_overflow(bytes, dim, &bytes))
      return std::nullopt;
  return bytes;
}

std::optional<uint64_t> asUnsigned(const json &value) {
  if (value.is_number_unsigned())
    return value.get<uint64_t>();
  return std::nullopt;
}

/// Validates one tensor entry of the header; errors name the tensor.
class EntryParser {
public:
  EntryParser(std::string_view source, const std::string &name)
      : source_(source), name_(name) {}

  absl::StatusOr<TensorInfo> parse(const json &entry) {
    if (!entry.is_object())
      return error(detail::strCat("expected an object, got ",
                                  detail::describeJson(entry)));
    for (const auto &[key, value] : entry.items())
      if (key != "dtype" && key != "shape" && key != "data_offsets")
        return error(detail::strCat("unknown key '", key, "'"));
    TensorInfo info;
    info.name = name_;
    if (absl::Status s = parseDtype(entry, info); !s.ok())
      return s;
    if (absl::Status s = parseShape(entry, info); !s.ok())
      return s;
    if (absl::Status s = parseOffsets(entry, info); !s.ok())
      return s;
    return info;
  }

private:
  absl::Status error(std::string_view message) const {
    return absl::InvalidArgumentError(
        detail::strCat(source_, ": tensor '", name_, "': ", message));
  }

  const json *field(const json &entry, std::string_view key) const {
    auto it = entry.find(key);
    return it == entry.end() ? nullptr : &*it;
  }

  absl::Status parseDtype(const json &entry, TensorInfo &info) const {
    const json *dtype = field(entry, "dtype");
    if (!dtype)
      return error("missing 'dtype'");
    std::optional<DType> parsed;
    if (dtype->is_string())
      parsed = parseDType(dtype->get_ref<const std::string &>());
    if (!parsed)
      return error(
          detail::strCat("unknown dtype ", detail::describeJson(*dtype)));
    info.dtype = *parsed;
    return absl::OkStatus();
  }

  absl::Status parseShape(const json &entry, TensorInfo &info) const {
    const json *shape = field(entry, "shape");
    if (!shape)
      return error("missing 'shape'");
    if (!shape->is_array())
      return error(detail::strCat("shape must be an array of non-negative "
                                  "integers, got ",
                                  detail::describeJson(*shape)));
    for (const json &dim : *shape) {
      std::optional<uint64_t> d = asUnsigned(dim);
      if (!d || *d > static_cast<uint64_t>(INT64_MAX))
        return error(detail::strCat("shape must be an array of non-negative "
                                    "integers, got ",
                                    detail::describeJson(*shape)));
      info.shape.push_back(static_cast<int64_t>(*d));
    }
    if (!byteSize(info.dtype, info.shape))
      return error(detail::strCat("shape ", shapeString(info.shape),
                                  " of dtype ", dtypeName(info.dtype),
                                  " overflows the 64-bit byte count"));
    return absl::OkStatus();
  }

  absl::Status parseOffsets(const json &entry, TensorInfo &info) const {
    const json *offsets = field(entry, "data_offsets");
    if (!offsets)
      return error("missing 'data_offsets'");
    std::optional<uint64_t> begin, end;
    if (offsets->is_array() && offsets->size() == 2) {
      begin = asUnsigned((*offsets)[0]);
      end = asUnsigned((*offsets)[1]);
    }
    if (!begin || !end || *begin > *end)
      return error(detail::strCat("data_offsets must be [begin, end] with "
                                  "0 <= begin <= end, got ",
                                  detail::describeJson(*offsets)));
    info.begin = *begin;
    info.end = *end;
    uint64_t need = static_cast<uint64_t>(*byteSize(info.dtype, info.shape));
    if (info.end - info.begin != need)
      return error(detail::strCat("data_offsets span ", info.end - info.begin,
                                  " bytes but dtype ", dtypeName(info.dtype),
                                  " and shape ", shapeString(info.shape),
                                  " need ", need));
    return absl::OkStatus();
  }

  std::string_view source_;
  const std::string &name_;
};

absl::Status parseMetadata(const json &value, std::string_view source,
                           std::map<std::string, std::string> &metadata) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        detail::strCat(source,
                       ": '__metadata__' must be an object of string "
                       "values, got ",
                       detail::describeJson(value)));
  };
  if (!value.is_object())
    return bad();
  for (const auto &[key, v] : value.items()) {
    if (!v.is_string())
      return bad();
    metadata[key] = v.get<std::string>();
  }
  return absl::OkStatus();
}

/// Offsets are checked against the data section and against each other;
/// empty tensors occupy no bytes and so cannot overlap anything.
absl::Status checkLayout(const std::vector<TensorInfo> &tensors,
                         uint64_t dataSize, std::string_view source) {
  for (const TensorInfo &t : tensors)
    if (t.end > dataSize)
      return absl::InvalidArgumentError(detail::strCat(
          source, ": tensor '", t.name, "': data_offsets [", t.begin, ",",
          t.end, "] run past the ", dataSize, "-byte data section"));
  std::vector<const TensorInfo *> byBegin;
  for (const TensorInfo &t : tensors)
    if (t.begin != t.end)
      byBegin.push_back(&t);
  std::sort(byBegin.begin(), byBegin.end(),
            [](const TensorInfo *a, const TensorInfo *b) {
              return a->begin < b->begin;
            });
  for (size_t i = 1; i < byBegin.size(); ++i) {
    const TensorInfo &prev = *byBegin[i - 1], &cur = *byBegin[i];
    if (cur.begin < prev.end)
      return absl::InvalidArgumentError(detail::strCat(
          source, ": tensors '", prev.name, "' [", prev.begin, ",", prev.end,
          "] and '", cur.name, "' [", cur.begin, ",", cur.end, "] overlap"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SafetensorsHeader>
parseHeaderJson(const json &root, uint64_t dataSize, std::string_view source) {
  if (!root.is_object())
    return absl::InvalidArgumentError(
        detail::strCat(source, ": header must be a JSON object, got ",
                       detail::describeJson(root)));
  SafetensorsHeader header;
  for (const auto &[name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (absl::Status s = parseMetadata(entry, source, header.metadata);
          !s.ok())
        return s;
      continue;
    }
    absl::StatusOr<TensorInfo> info = EntryParser(source, name).parse(entry);
    if (!info.ok())
      return info.status();
    header.tensors.push_back(std::move(*info));
  }
  if (absl::Status s = checkLayout(header.tensors, dataSize, source); !s.ok())
    return s;
  // nlohmann's object is a std::map, so the tensors already come sorted.
  return header;
}

/// The header JSON with its 8-byte length prefix, padded with spaces to a
/// multiple of 8 bytes as the reference writer does so the data section
/// stays aligned.
std::string encodeHeader(std::span<const TensorToWrite> tensors,
                         const std::map<std::string, std::string> &metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty())
    header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite &t : tensors) {
    uint64_t end = offset + t.bytes.size();
    header[t.name] = {{"dtype", dtypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t length = text.size();
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  return out + text;
}

absl::Status checkTensorsToWrite(std::span<const TensorToWrite> tensors,
                                 const std::filesystem::path &path) {
  std::map<std::string_view, int> seen;
  for (const TensorToWrite &t : tensors) {
    auto fail = [&](std::string_view message) {
      return absl::InvalidArgumentError(
          detail::strCat(path.string(), ": tensor '", t.name, "': ", message));
    };
    if (t.name == "__metadata__")
      return fail("the name is reserved for metadata");
    if (!seen.emplace(t.name, 0).second)
      return fail("written twice");
    std::optional<int64_t> need = byteSize(t.dtype, t.shape);
    if (!need)
      return fail(detail::strCat("shape ", shapeString(t.shape),
                                 " is negative or overflows"));
    if (static_cast<uint64_t>(*need) != t.bytes.size())
      return fail(detail::strCat("has ", t.bytes.size(), " bytes but dtype ",
                                 dtypeName(t.dtype), " and shape ",
                                 shapeString(t.shape), " need ", *need));
  }
  return absl::OkStatus();
}

absl::Status errnoStatus(std::string_view what,
                         const std::filesystem::path &path, int err) {
  return absl::InternalError(detail::strCat("cannot ", what, " ", path.string(),
                                            ": ", std::strerror(err)));
}

absl::Status writeAll(int fd, std::span<const std::byte> bytes,
                      const std::filesystem::path &path) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return errnoStatus("write", path, errno);
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status writeFile(const std::filesystem::path &path,
                       std::span<const TensorToWrite> tensors,
                       const std::string &header) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return errnoStatus("create", path, errno);
  absl::Status status = writeAll(fd, std::as_bytes(std::span(header)), path);
  for (const TensorToWrite &t : tensors)
    if (status.ok())
      status = writeAll(fd, t.bytes, path);
  if (status.ok() && ::fsync(fd) != 0)
    status = errnoStatus("sync", path, errno);
  if (::close(fd) != 0 && status.ok())
    status = errnoStatus("close", path, errno);
  return status;
}

} // namespace

int64_t TensorInfo::numElements() const {
  int64_t n = 1;
  for (int64_t dim : shape)
    n *= dim;
  return n;
}

absl::StatusOr<SafetensorsHeader>
parseSafetensorsHeader(std::span<const std::byte> bytes,
                       std::string_view sourceName) {
  auto fail = [&](std::string_view message) {
    return absl::InvalidArgumentError(
        detail::strCat(sourceName, ": ", message));
  };
  if (bytes.size() < 8)
    return fail(
        detail::strCat("file is ", bytes.size(),
                       " bytes, too short for the 8-byte header length"));
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i)
    length = (length << 8) | std::to_integer<uint64_t>(bytes[i]);
  uint64_t remaining = bytes.size() - 8;
  if (length > remaining)
    return fail(detail::strCat("header length ", length,
                               " runs past end of file (size ", bytes.size(),
                               ")"));
  if (length > kMaxHeaderBytes)
    return fail(detail::strCat("header length ", length,
                               " exceeds the limit of ", kMaxHeaderBytes,
                               " bytes"));
  const char *text = reinterpret_cast<const char *>(bytes.data()) + 8;
  try {
    json root = json::parse(text, text + length);
    absl::StatusOr<SafetensorsHeader> header =
        parseHeaderJson(root, remaining - length, sourceName);
    if (header.ok())
      header->dataOffset = 8 + length;
    return header;
  } catch (const json::parse_error &e) {
    return fail(detail::strCat("malformed header JSON at byte ", e.byte,
                               " of the header: ", e.what()));
  } catch (const json::exception &e) {
    return fail(detail::strCat("invalid header JSON: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>>
SafetensorsFile::open(const std::filesystem::path &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errnoStatus("open", path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return errnoStatus("stat", path, err);
  }
  if (!S_ISREG(st.st_mode) || st.st_size == 0) {
    ::close(fd);
    return absl::InvalidArgumentError(detail::strCat(
        path.string(),
        S_ISREG(st.st_mode) ? ": file is empty" : ": not a regular file"));
  }
  size_t size = static_cast<size_t>(st.st_size);
  void *mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int mapErr = errno;
  ::close(fd);
  if (mapping == MAP_FAILED)
    return errnoStatus("map", path, mapErr);
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = static_cast<const std::byte *>(mapping);
  file->mappingSize_ = size;
  absl::StatusOr<SafetensorsHeader> header = parseSafetensorsHeader(
      std::span(file->mapping_, file->mappingSize_), path.string());
  if (!header.ok())
    return header.status();
  file->header_ = std::move(*header);
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_)
    ::munmap(const_cast<std::byte *>(mapping_), mappingSize_);
}

const TensorInfo *SafetensorsFile::find(std::string_view name) const {
  const std::vector<TensorInfo> &tensors = header_.tensors;
  auto it = std::lower_bound(
      tensors.begin(), tensors.end(), name,
      [](const TensorInfo &t, std::string_view n) { return t.name < n; });
  return it != tensors.end() && it->name == name ? &*it : nullptr;
}

std::span<const std::byte>
SafetensorsFile::data(const TensorInfo &tensor) const {
  return std::span(mapping_ + header_.dataOffset + tensor.begin,
                   tensor.end - tensor.begin);
}

absl::Status
writeSafetensors(const std::filesystem::path &path,
                 std::span<const TensorToWrite> tensors,
                 const std::map<std::string, std::string> &metadata) {
  if (absl::Status s = checkTensorsToWrite(tensors, path); !s.ok())
    return s;
  std::string header;
  try {
    header = encodeHeader(tensors, metadata);
  } catch (const nlohmann::json::exception &e) {
    // Names and metadata must be valid UTF-8 to be serialized.
    return absl::InvalidArgumentError(detail::strCat(
        path.string(), ": cannot encode the header: ", e.what()));
  }
  std::filesystem::path tmp = path;
  tmp += detail::strCat(".tmp.", ::getpid());
  absl::Status status = writeFile(tmp, tensors, header);
  if (status.ok() && std::rename(tmp.c_str(), path.c_str()) != 0)
    status = errnoStatus("rename to", path, errno);
  if (!status.ok())
    ::unlink(tmp.c_str());
  return status;
}

} // namespace kiln::frontend
