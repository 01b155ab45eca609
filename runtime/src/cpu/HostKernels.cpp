#include "runtime/src/cpu/HostKernels.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kiln::cpu {

absl::StatusOr<std::unique_ptr<HostKernels>>
HostKernels::load(const artifact::HostModule &module,
                  const std::string &source) {
  auto fail = [&](const std::string &what) {
    return absl::InvalidArgumentError(source + ": the CPU kernels (" +
                                      module.target()->str() +
                                      " shared object): " + what);
  };
  // dlopen needs a path: an anonymous in-memory file leaves nothing on disk
  // and disappears with the process.
  int fd = ::memfd_create("kiln-host-kernels", MFD_CLOEXEC);
  if (fd < 0)
    return fail(std::string("memfd_create: ") + std::strerror(errno));
  const auto *bytes = module.shared_object()->data();
  size_t size = module.shared_object()->size();
  for (size_t done = 0; done < size;) {
    ssize_t n = ::write(fd, bytes + done, size - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      ::close(fd);
      return fail(std::string("write: ") + std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
  // The loader knows objects by path: the descriptor stays open while the
  // object is loaded, so that no other module gets the same path.
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  void *handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    ::close(fd);
    const char *error = ::dlerror();
    return fail(std::string("dlopen: ") + (error ? error : "failed"));
  }
  std::unique_ptr<HostKernels> kernels(new HostKernels);
  kernels->handle_ = handle;
  kernels->fd_ = fd;
  kernels->path_ = path;
  for (const artifact::HostKernel *k : *module.kernels()) {
    std::string symbol = k->name()->str() + "_host";
    void *entry = ::dlsym(handle, symbol.c_str());
    if (!entry)
      return fail("no entry " + symbol);
    kernels->entries_[k->name()->str()] = reinterpret_cast<Entry>(entry);
    kernels->arguments_[k->name()->str()] = k->args();
  }
  return kernels;
}

HostKernels::~HostKernels() {
  if (!handle_)
    return;
  ::dlclose(handle_);
  // An object the loader keeps (e.g. one marked NODELETE) keeps its path.
  if (void *still = ::dlopen(path_.c_str(), RTLD_NOW | RTLD_NOLOAD)) {
    ::dlclose(still);
    return;
  }
  ::close(fd_);
}

HostKernels::Entry HostKernels::find(std::string_view kernel) const {
  auto it = entries_.find(std::string(kernel));
  return it == entries_.end() ? nullptr : it->second;
}

uint32_t HostKernels::arguments(std::string_view kernel) const {
  auto it = arguments_.find(std::string(kernel));
  return it == arguments_.end() ? 0 : it->second;
}

} // namespace kiln::cpu
