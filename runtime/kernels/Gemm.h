// Placeholder: filled in by the Gemm kernels work.
#ifndef KILN_KERNELS_GEMM_H
#define KILN_KERNELS_GEMM_H
#include "FusedPrelude.h"
#endif
