// Drives the session API with arbitrary calls: the bytes are a program of
// prefills, decode steps, releases, extensions and reads, with ids, token
// ids, prompt lengths and positions in and out of range, over a cache of 1
// to 4 blocks. Whatever the calls, the session must neither crash nor read
// out of bounds (the sanitizers watch), refuse what it does not take with a
// caller's error (InvalidArgument, OutOfRange, ResourceExhausted,
// FailedPrecondition), and keep its account: live sequences have their
// lengths and a row of logits, dead ids none, and the free cache never
// grows past the pool.
//
// The model is the artifact KILN_FUZZ_SESSION_ARTIFACT names (fuzz-smoke.sh
// compiles a tiny DeepSeek-V3 with 2 sequences of 8 tokens), loaded once,
// without its CPU kernels (the reference kernels are instrumented).
#include "kiln/Runtime.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

std::unique_ptr<kiln::Model> model;

/// The input as a stream of bytes, zero once it runs out.
class Bytes {
public:
  Bytes(const uint8_t *data, size_t size) : data_(data), size_(size) {}
  bool done() const { return at_ >= size_; }
  uint8_t next() { return at_ < size_ ? data_[at_++] : 0; }
  /// A value in [lo, hi].
  int in(int lo, int hi) {
    return lo + static_cast<int>(next() % static_cast<unsigned>(hi - lo + 1));
  }

private:
  const uint8_t *data_;
  size_t size_, at_ = 0;
};

[[noreturn]] void fail(const std::string &what) {
  std::fprintf(stderr, "kiln-fuzz-session: %s\n", what.c_str());
  std::abort();
}

/// A refusal must be the caller's error, never an internal one.
void expectCallerError(const absl::Status &status, const char *call) {
  switch (status.code()) {
  case absl::StatusCode::kOk:
  case absl::StatusCode::kInvalidArgument:
  case absl::StatusCode::kOutOfRange:
  case absl::StatusCode::kResourceExhausted:
  case absl::StatusCode::kFailedPrecondition:
    return;
  default:
    fail(std::string(call) + ": " + status.ToString());
  }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  const char *path = std::getenv("KILN_FUZZ_SESSION_ARTIFACT");
  if (!path)
    fail("set KILN_FUZZ_SESSION_ARTIFACT to a small artifact");
  kiln::LoadOptions options;
  options.hostKernels = false;
  auto opened = kiln::Model::open(path, options);
  if (!opened.ok())
    fail(std::string(path) + ": " + opened.status().ToString());
  model = *std::move(opened);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const kiln::ModelInfo &info = model->info();
  auto vocab = static_cast<int>(info.vocabSize);
  int context = static_cast<int>(info.maxContext);
  int batch = static_cast<int>(info.maxBatch);
  Bytes in(data, size);
  kiln::SessionOptions options;
  options.device = kiln::Device::Cpu;
  options.kvBlocks = in.in(1, 4);
  options.promptLogits = in.next() % 2 == 0;
  auto session = kiln::Session::create(*model, options);
  if (!session.ok())
    fail("Session::create: " + session.status().ToString());
  kiln::Session &s = **session;
  const int64_t pool = s.freeCacheTokens();
  // Ids past the session's sequences and negative ones too.
  auto anyId = [&] { return in.in(-2, batch + 2); };
  auto anyToken = [&] {
    int kind = in.in(0, 7);
    return kind == 0 ? -1 : kind == 1 ? vocab : in.in(0, vocab - 1);
  };
  for (int op = 0; op < 64 && !in.done(); ++op) {
    switch (in.in(0, 7)) {
    case 0: { // prefill, lengths from empty to past the context
      std::vector<std::vector<int32_t>> prompts(in.in(0, batch + 1));
      for (std::vector<int32_t> &prompt : prompts) {
        prompt.resize(in.in(0, context + 1));
        for (int32_t &token : prompt)
          token = in.in(0, 15) == 0 ? anyToken() : in.in(0, vocab - 1);
      }
      // Now and then with a visitor, which must see each started
      // sequence's prompt positions once, in order, as rows of the vocab.
      std::map<int, size_t> seen;
      kiln::Session::PromptLogitsVisitor visit;
      if (in.in(0, 1))
        visit = [&](int sequence, size_t position, std::span<const float> row) {
          if (row.size() != static_cast<size_t>(vocab) ||
              position != seen[sequence]++)
            fail("a visited prompt row out of order or of another size");
        };
      auto ids = s.prefill(prompts, visit);
      expectCallerError(ids.status(), "prefill");
      if (ids.ok())
        for (size_t i = 0; i < ids->size(); ++i) {
          if (s.length((*ids)[i]) != prompts[i].size())
            fail("a prefilled sequence's length is not its prompt's");
          if (visit && seen[(*ids)[i]] != prompts[i].size())
            fail("the visitor missed a prompt position");
        }
      break;
    }
    case 1: { // decode of any ids (repeats, dead ones) and tokens
      std::vector<int> ids(in.in(0, batch + 1));
      std::vector<int32_t> tokens(ids.size() + (in.in(0, 7) == 0 ? 1 : 0));
      for (int &id : ids)
        id = anyId();
      for (int32_t &token : tokens)
        token = anyToken();
      expectCallerError(s.decode(ids, tokens), "decode");
      break;
    }
    case 2: { // a step of every live sequence
      std::vector<int32_t> tokens(s.numSequences());
      for (int32_t &token : tokens)
        token = in.in(0, vocab - 1);
      expectCallerError(s.decode(tokens), "decode (all)");
      break;
    }
    case 3:
      expectCallerError(s.release(anyId()), "release");
      break;
    case 4:
      expectCallerError(s.extendUncomputed(anyId(), in.in(-1, context)),
                        "extendUncomputed");
      break;
    case 5: {
      auto row =
          s.promptLogits(anyId(), static_cast<size_t>(in.in(0, context)));
      expectCallerError(row.status(), "promptLogits");
      if (row.ok() && row->size() != static_cast<size_t>(vocab))
        fail("promptLogits: a row of the wrong size");
      break;
    }
    default: { // reads of any id
      int id = anyId();
      bool alive = false;
      for (int live : s.sequences())
        alive |= live == id;
      if (s.logits(id).size() != (alive ? static_cast<size_t>(vocab) : 0))
        fail("logits(" + std::to_string(id) + ") of the wrong size");
      if ((s.length(id) > 0) != alive ||
          s.length(id) > static_cast<size_t>(context))
        fail("length(" + std::to_string(id) + ") disagrees with sequences()");
      break;
    }
    }
    if (s.numSequences() > static_cast<size_t>(batch) ||
        s.freeCacheTokens() < 0 || s.freeCacheTokens() > pool)
      fail("the session lost count of its sequences or its cache");
  }
  for (int id : s.sequences())
    if (!s.release(id).ok())
      fail("a live sequence would not release");
  if (s.freeCacheTokens() != pool)
    fail("released sequences left cache blocks behind");
  return 0;
}
