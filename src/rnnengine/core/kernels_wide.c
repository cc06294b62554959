/* The AVX-512 variants of the recurrent kernels (with their dot-product and AMX entries),
 * a translation unit of the core.kernels extension of its own, compiled beside the others
 * (setup.py; kernels.h: RNN_KERNELS_PART). */
#undef RNN_KERNELS_PART
#define RNN_KERNELS_PART 3
#include "rnnengine/kernels.h"
