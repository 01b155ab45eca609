// Placeholder: filled in by the Attention kernels work.
#ifndef KILN_KERNELS_ATTENTION_H
#define KILN_KERNELS_ATTENTION_H
#include "FusedPrelude.h"
#endif
