# -*- Python -*-
# lit configuration of Kiln's FileCheck tests (tests/ir, tests/passes,
# tests/tools). Loaded by the site config that CMake writes into
# <build>/tests; run with `ctest -R lit` or `lit -sv <build>/tests`.

import os

import lit.formats
import lit.llvm
import lit.util
from lit.llvm.subst import ToolSubst

lit.llvm.initialize(lit_config, config)
from lit.llvm import llvm_config  # noqa: E402 (set by initialize)

config.name = "Kiln"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]

config.test_source_root = os.path.dirname(__file__)
if not getattr(config, "test_exec_root", None):
    config.test_exec_root = os.path.join(config.kiln_obj_root, "tests")

# Everything else under tests/ is not lit: gtest suites, fuzzers, the model
# scripts and the CMake directory of this suite.
config.excludes = [
    "CMakeLists.txt",
    "frontend",
    "fuzz",
    "lit",
    "models",
    "lit.cfg.py",
    "lit.site.cfg.py",
]

config.substitutions.append(
    ("%presets", os.path.join(config.kiln_src_root, "models", "presets")))

llvm_config.with_system_environment(["HOME", "INCLUDE", "LIB", "TMP", "TEMP"])
llvm_config.use_default_substitutions()

# Kiln's tools from the build tree; FileCheck, not, count and split-file from
# LLVM.
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.with_environment("PATH", config.kiln_tools_dir, append_path=True)

tools = [
    ToolSubst("kiln-opt", unresolved="fatal"),
    ToolSubst("kiln-run", unresolved="fatal"),
    ToolSubst("kiln", unresolved="fatal"),
    ToolSubst("split-file", unresolved="fatal"),
    ToolSubst("not", unresolved="fatal"),
]
llvm_config.add_tool_substitutions(
    tools, [config.kiln_tools_dir, config.llvm_tools_dir])

# Tests that compile CUDA with NVRTC (loaded at run time by the compiler).
import ctypes

for _nvrtc in ("libnvrtc.so.13", "libnvrtc.so"):
    try:
        ctypes.CDLL(_nvrtc)
        config.available_features.add("nvrtc")
        break
    except OSError:
        pass
