//===- Nvrtc.cpp - CUDA source -> CUBIN and PTX with NVRTC ----------------===//
#include "codegen/Nvrtc.h"

#include <cctype>

#if KILN_HAVE_NVRTC
#include <nvrtc.h>

#include <dlfcn.h>
#endif

namespace kiln::codegen {

#if KILN_HAVE_NVRTC
namespace {

struct NvrtcApi {
  const char *(*nvrtcGetErrorString)(nvrtcResult);
  nvrtcResult (*nvrtcCreateProgram)(nvrtcProgram *, const char *, const char *,
                                    int, const char *const *,
                                    const char *const *);
  nvrtcResult (*nvrtcDestroyProgram)(nvrtcProgram *);
  nvrtcResult (*nvrtcCompileProgram)(nvrtcProgram, int, const char *const *);
  nvrtcResult (*nvrtcGetProgramLogSize)(nvrtcProgram, size_t *);
  nvrtcResult (*nvrtcGetProgramLog)(nvrtcProgram, char *);
  nvrtcResult (*nvrtcGetCUBINSize)(nvrtcProgram, size_t *);
  nvrtcResult (*nvrtcGetCUBIN)(nvrtcProgram, char *);
  nvrtcResult (*nvrtcGetPTXSize)(nvrtcProgram, size_t *);
  nvrtcResult (*nvrtcGetPTX)(nvrtcProgram, char *);
};

template <typename Fn> bool resolve(void *library, const char *name, Fn &slot) {
  slot = reinterpret_cast<Fn>(::dlsym(library, name));
  return slot != nullptr;
}

/// NVRTC, loaded once per process and kept (programs may be compiled from
/// any thread; NVRTC is thread-safe).
absl::StatusOr<const NvrtcApi *> loadNvrtc() {
  static const absl::StatusOr<NvrtcApi> api = []() -> absl::StatusOr<NvrtcApi> {
    void *library = nullptr;
    std::string why;
    for (const char *name : {"libnvrtc.so.13", "libnvrtc.so"}) {
      library = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (library)
        break;
      const char *error = ::dlerror();
      why += std::string(why.empty() ? "" : "; ") + (error ? error : name);
    }
    if (!library)
      return absl::UnavailableError("cannot load NVRTC (" + why + ")");
    NvrtcApi a{};
    struct Entry {
      const char *name;
      bool ok;
    };
    Entry entries[] = {
        {"nvrtcGetErrorString",
         resolve(library, "nvrtcGetErrorString", a.nvrtcGetErrorString)},
        {"nvrtcCreateProgram",
         resolve(library, "nvrtcCreateProgram", a.nvrtcCreateProgram)},
        {"nvrtcDestroyProgram",
         resolve(library, "nvrtcDestroyProgram", a.nvrtcDestroyProgram)},
        {"nvrtcCompileProgram",
         resolve(library, "nvrtcCompileProgram", a.nvrtcCompileProgram)},
        {"nvrtcGetProgramLogSize",
         resolve(library, "nvrtcGetProgramLogSize", a.nvrtcGetProgramLogSize)},
        {"nvrtcGetProgramLog",
         resolve(library, "nvrtcGetProgramLog", a.nvrtcGetProgramLog)},
        {"nvrtcGetCUBINSize",
         resolve(library, "nvrtcGetCUBINSize", a.nvrtcGetCUBINSize)},
        {"nvrtcGetCUBIN", resolve(library, "nvrtcGetCUBIN", a.nvrtcGetCUBIN)},
        {"nvrtcGetPTXSize",
         resolve(library, "nvrtcGetPTXSize", a.nvrtcGetPTXSize)},
        {"nvrtcGetPTX", resolve(library, "nvrtcGetPTX", a.nvrtcGetPTX)},
    };
    for (const Entry &e : entries)
      if (!e.ok) {
        ::dlclose(library);
        return absl::UnavailableError(std::string("NVRTC lacks ") + e.name);
      }
    return a;
  }();
  if (!api.ok())
    return api.status();
  return &*api;
}

/// One NVRTC program, destroyed with its scope.
class Program {
public:
  Program(const NvrtcApi &api) : api_(api) {}
  ~Program() {
    if (program_)
      api_.nvrtcDestroyProgram(&program_);
  }
  Program(const Program &) = delete;
  Program &operator=(const Program &) = delete;

  absl::Status check(nvrtcResult result, const char *what) const {
    if (result == NVRTC_SUCCESS)
      return absl::OkStatus();
    return absl::InternalError(std::string(what) +
                               " failed: " + api_.nvrtcGetErrorString(result));
  }

  /// Compiles; `log` receives NVRTC's messages either way.
  absl::Status compile(const std::string &source, const std::string &name,
                       const std::vector<CudaHeader> &headers,
                       const std::vector<std::string> &options,
                       std::string &log) {
    std::vector<const char *> headerTexts, headerNames, optionPtrs;
    for (const CudaHeader &h : headers) {
      headerNames.push_back(h.first.c_str());
      headerTexts.push_back(h.second.c_str());
    }
    for (const std::string &o : options)
      optionPtrs.push_back(o.c_str());
    if (absl::Status s = check(
            api_.nvrtcCreateProgram(&program_, source.c_str(), name.c_str(),
                                    static_cast<int>(headers.size()),
                                    headerTexts.data(), headerNames.data()),
            "nvrtcCreateProgram");
        !s.ok())
      return s;
    nvrtcResult compiled = api_.nvrtcCompileProgram(
        program_, static_cast<int>(optionPtrs.size()), optionPtrs.data());
    size_t size = 0;
    if (api_.nvrtcGetProgramLogSize(program_, &size) == NVRTC_SUCCESS &&
        size > 1) {
      log.resize(size);
      if (api_.nvrtcGetProgramLog(program_, log.data()) != NVRTC_SUCCESS)
        log.clear();
      while (!log.empty() && log.back() == '\0')
        log.pop_back();
    }
    if (compiled == NVRTC_ERROR_COMPILATION)
      return absl::InvalidArgumentError(name + " does not compile:\n" + log);
    return check(compiled, "nvrtcCompileProgram");
  }

  absl::StatusOr<std::string>
  output(nvrtcResult (*getSize)(nvrtcProgram, size_t *),
         nvrtcResult (*get)(nvrtcProgram, char *), const char *what) const {
    size_t size = 0;
    if (absl::Status s = check(getSize(program_, &size), what); !s.ok())
      return s;
    std::string bytes(size, '\0');
    if (absl::Status s = check(get(program_, bytes.data()), what); !s.ok())
      return s;
    return bytes;
  }

private:
  const NvrtcApi &api_;
  nvrtcProgram program_ = nullptr;
};

} // namespace

absl::StatusOr<CudaBinary> compileCuda(const std::string &source,
                                       const std::string &name,
                                       const std::string &arch,
                                       const std::vector<CudaHeader> &headers) {
  absl::StatusOr<const NvrtcApi *> api = loadNvrtc();
  if (!api.ok())
    return api.status();
  if (arch.rfind("sm_", 0) != 0)
    return absl::InvalidArgumentError("not a real GPU architecture: " + arch);
  // sm_90a -> compute_90: the PTX of the family, without the arch-specific
  // features that only the CUBIN may use.
  std::string digits = arch.substr(3);
  while (!digits.empty() &&
         !std::isdigit(static_cast<unsigned char>(digits.back())))
    digits.pop_back();
  std::vector<std::string> common = {"--std=c++17", "--fmad=false"};
  CudaBinary binary;
  {
    Program program(**api);
    std::vector<std::string> options = common;
    options.push_back("--gpu-architecture=" + arch);
    if (absl::Status s =
            program.compile(source, name, headers, options, binary.log);
        !s.ok())
      return s;
    absl::StatusOr<std::string> cubin = program.output(
        (*api)->nvrtcGetCUBINSize, (*api)->nvrtcGetCUBIN, "nvrtcGetCUBIN");
    if (!cubin.ok())
      return cubin.status();
    binary.cubin = std::move(*cubin);
  }
  Program program(**api);
  std::vector<std::string> options = common;
  options.push_back("--gpu-architecture=compute_" + digits);
  std::string log;
  if (absl::Status s = program.compile(source, name, headers, options, log);
      !s.ok())
    return s;
  absl::StatusOr<std::string> ptx = program.output(
      (*api)->nvrtcGetPTXSize, (*api)->nvrtcGetPTX, "nvrtcGetPTX");
  if (!ptx.ok())
    return ptx.status();
  // NVRTC counts the PTX's terminating NUL.
  while (!ptx->empty() && ptx->back() == '\0')
    ptx->pop_back();
  binary.ptx = std::move(*ptx);
  return binary;
}

#else

absl::StatusOr<CudaBinary> compileCuda(const std::string &, const std::string &,
                                       const std::string &,
                                       const std::vector<CudaHeader> &) {
  return absl::UnavailableError(
      "kiln was built without the CUDA toolkit: no NVRTC to compile CUDA");
}

#endif

} // namespace kiln::codegen
