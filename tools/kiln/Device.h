//===- Device.h - which device runs an artifact -----------------*- C++ -*-===//
#ifndef KILN_TOOLS_KILN_DEVICE_H
#define KILN_TOOLS_KILN_DEVICE_H

#include "kiln/Runtime.h"

#include <string>

namespace kiln::tools {

/// For an artifact that carries GPU code: one line saying that it runs on
/// the CPU, and why not on a GPU (no driver, no device, or no CUDA executor
/// in this runtime yet). Empty for CPU-only artifacts.
std::string deviceNote(const ModelInfo &info);

} // namespace kiln::tools

#endif // KILN_TOOLS_KILN_DEVICE_H
