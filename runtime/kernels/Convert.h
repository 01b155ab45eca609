// Placeholder: filled in by the Convert kernels work.
#ifndef KILN_KERNELS_CONVERT_H
#define KILN_KERNELS_CONVERT_H
#include "FusedPrelude.h"
#endif
