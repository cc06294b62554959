/* The AVX2 variant of the recurrent kernels (with its integer int8 product), a translation
 * unit of the core.kernels extension of its own, compiled beside the others (setup.py;
 * kernels.h: RNN_KERNELS_PART). */
#undef RNN_KERNELS_PART
#define RNN_KERNELS_PART 2
#include "rnnengine/kernels.h"
