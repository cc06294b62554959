/* The AVX-512 variants of the recurrent kernels (with their dot-product and AMX entries),
 * compiled as a second translation unit of the _kernels extension, beside the one Cython
 * writes (serial and AVX2): the two compile in parallel (setup.py; kernels.h:
 * RNN_KERNELS_PART). */
#undef RNN_KERNELS_PART
#define RNN_KERNELS_PART 2
#include "rnnengine/kernels.h"
