// The CUDA executor's library kernels, built by nvcc into one fatbin (sm_90a
// code and compute_90 PTX) that the runtime embeds and loads with
// cuModuleLoadData: no CUDA runtime library, no link against the driver.
#include "KvAttention.h"
#include "Library.h"
#include "Matmul.h"
#include "MmaAttention.h"
#include "GemmGroup.h"
#include "MmaGemm.h"
