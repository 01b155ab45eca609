//===- HostModule.cpp - fused kernels compiled for the CPU ----------------===//
#include "codegen/HostModule.h"

#include "codegen/FusedKernelEmitter.h"
#include "kiln/ArtifactFormat.h"
#include "support/AtomicFile.h"

#include "mlir/IR/Diagnostics.h"
#include "llvm/Support/raw_ostream.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

extern char **environ;

namespace kiln::codegen {
namespace {

namespace fs = std::filesystem;

// -ffp-contract=off: no FMA contraction, as in the CUDA build
// (--fmad=false) and the reference kernels, so the three round alike.
const std::vector<std::string> kFlags = {
    "-std=c++17", "-O2", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off"};

std::string hostCompiler(const HostModuleOptions &options) {
  if (!options.compiler.empty())
    return options.compiler;
  if (const char *env = std::getenv("KILN_HOST_CXX"); env && *env)
    return env;
#ifdef KILN_DEFAULT_HOST_CXX
  if (::access(KILN_DEFAULT_HOST_CXX, X_OK) == 0)
    return KILN_DEFAULT_HOST_CXX;
#endif
  return "c++";
}

fs::path cacheRoot(const HostModuleOptions &options) {
  if (!options.cacheDir.empty())
    return options.cacheDir;
  if (const char *env = std::getenv("KILN_CACHE_DIR"); env && *env)
    return env;
  if (const char *env = std::getenv("XDG_CACHE_HOME"); env && *env)
    return fs::path(env) / "kiln";
  if (const char *env = std::getenv("HOME"); env && *env)
    return fs::path(env) / ".cache" / "kiln";
  return {};
}

absl::StatusOr<std::string> readFile(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError("cannot read " + path.string());
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// Runs `argv` (no shell) with stdout and stderr into `log`; the exit code,
/// or Unavailable when the program cannot be started.
absl::StatusOr<int> run(const std::vector<std::string> &argv,
                        const fs::path &log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::vector<char *> args;
  for (const std::string &a : argv)
    args.push_back(const_cast<char *>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  int error =
      ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0)
    return absl::UnavailableError("cannot run the host C++ compiler '" +
                                  argv[0] + "': " + std::strerror(error) +
                                  " (set KILN_HOST_CXX)");
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return absl::InternalError(std::string("waitpid: ") +
                                 std::strerror(errno));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// A scratch directory, removed with its contents when this goes.
class TempDir {
public:
  static absl::StatusOr<TempDir> create() {
    std::string pattern =
        (fs::temp_directory_path() / "kiln-host-XXXXXX").string();
    if (!::mkdtemp(pattern.data()))
      return absl::InternalError("cannot create a directory for the host "
                                 "kernels' build: " +
                                 std::string(std::strerror(errno)));
    return TempDir(pattern);
  }
  TempDir(TempDir &&other) noexcept : path_(std::move(other.path_)) {
    other.path_.clear();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty())
      fs::remove_all(path_, ec);
  }
  const fs::path &path() const { return path_; }

private:
  explicit TempDir(fs::path path) : path_(std::move(path)) {}
  fs::path path_;
};

/// Compiles `source` (which includes the prelude) into a shared object.
absl::StatusOr<std::string> compile(const std::string &compiler,
                                    const std::string &source) {
  absl::StatusOr<TempDir> dir = TempDir::create();
  if (!dir.ok())
    return dir.status();
  const fs::path &root = dir->path();
  {
    std::ofstream(root / kFusedPreludeName) << fusedPreludeSource();
    std::ofstream(root / "kernels.cpp") << source;
  }
  std::vector<std::string> argv{compiler};
  argv.insert(argv.end(), kFlags.begin(), kFlags.end());
  argv.insert(argv.end(), {"-I", root.string(), (root / "kernels.cpp").string(),
                           "-o", (root / "kernels.so").string()});
  absl::StatusOr<int> code = run(argv, root / "build.log");
  if (!code.ok())
    return code.status();
  if (*code != 0) {
    absl::StatusOr<std::string> log = readFile(root / "build.log");
    return absl::InternalError("the host C++ compiler '" + compiler +
                               "' rejected the generated kernels (exit " +
                               std::to_string(*code) + "):\n" +
                               (log.ok() ? *log : std::string()));
  }
  return readFile(root / "kernels.so");
}

/// `compiler --version`, so that a compiler upgrade misses the cache.
absl::StatusOr<std::string> compilerVersion(const std::string &compiler) {
  absl::StatusOr<TempDir> dir = TempDir::create();
  if (!dir.ok())
    return dir.status();
  fs::path log = dir->path() / "version";
  absl::StatusOr<int> code = run({compiler, "--version"}, log);
  if (!code.ok())
    return code.status();
  if (*code != 0)
    return absl::UnavailableError("the host C++ compiler '" + compiler +
                                  "' fails on --version (set KILN_HOST_CXX)");
  return readFile(log);
}

std::string hexKey(const std::string &key) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(
                    artifact::checksum64(key.data(), key.size())));
  return hex;
}

} // namespace

absl::StatusOr<HostModuleReport>
addHostModule(mlir::ModuleOp module, artifact::ModelT &plan,
              const HostModuleOptions &options) {
  auto host = std::make_unique<artifact::HostModuleT>();
  host->target = artifact::kHostTarget;
  HostModuleReport report;
  std::string source;
  for (mlir::kiln::FusedOp fused : entryFusedGroups(module)) {
    std::string why;
    mlir::FailureOr<FusedKernel> kernel = [&] {
      mlir::ScopedDiagnosticHandler handler(
          module.getContext(), [&](mlir::Diagnostic &d) {
            llvm::raw_string_ostream(why) << d;
            return mlir::success();
          });
      return emitFusedKernel(fused);
    }();
    if (mlir::failed(kernel)) {
      report.skipped.push_back(fused.getName().str() + ": " + why);
      continue;
    }
    source += kernel->source;
    auto k = std::make_unique<artifact::HostKernelT>();
    k->name = kernel->name;
    k->args = static_cast<uint32_t>(kernel->args.size());
    host->kernels.push_back(std::move(k));
  }
  report.kernels = host->kernels.size();
  if (host->kernels.empty())
    return report;

  std::string compiler = hostCompiler(options);
  absl::StatusOr<std::string> version = compilerVersion(compiler);
  if (!version.ok())
    return version.status();
  std::string key = "compiler: " + compiler + "\n" + *version + "flags:";
  for (const std::string &f : kFlags)
    key += " " + f;
  key += "\n" + fusedPreludeSource() + source;

  // The key file holds the whole key, so a hash collision is a miss.
  fs::path root = cacheRoot(options);
  fs::path keyFile, objectFile;
  if (!root.empty()) {
    std::error_code ec;
    fs::create_directories(root / "host-kernels", ec);
    if (!ec) {
      std::string stem = hexKey(key);
      keyFile = root / "host-kernels" / (stem + ".key");
      objectFile = root / "host-kernels" / (stem + ".so");
    }
  }
  std::string object;
  if (!keyFile.empty()) {
    absl::StatusOr<std::string> cachedKey = readFile(keyFile);
    absl::StatusOr<std::string> cachedObject = readFile(objectFile);
    if (cachedKey.ok() && *cachedKey == key && cachedObject.ok() &&
        cachedObject->compare(0, 4,
                              "\x7f"
                              "ELF") == 0) {
      object = *std::move(cachedObject);
      report.cached = true;
    }
  }
  if (object.empty()) {
    absl::StatusOr<std::string> built = compile(compiler, source);
    if (!built.ok())
      return built.status();
    object = *std::move(built);
    // A cache that cannot be written only costs the next compile time.
    if (!keyFile.empty() && writeFileAtomically(objectFile, object).ok())
      (void)writeFileAtomically(keyFile, key);
  }
  host->shared_object.assign(object.begin(), object.end());
  plan.host_modules.push_back(std::move(host));
  return report;
}

} // namespace kiln::codegen
