/* Every ISA variant of the kernels in one translation unit, and the table that picks one.
 *
 * kernels_impl.h and math_impl.h are written once over a small vector vocabulary; this file
 * compiles them once per variant: portable C (always), and on x86-64 AVX2+FMA and AVX-512
 * through target pragmas, so setuptools needs no per-file flags and no -march. Each variant is
 * a table of function pointers; the driver calls through the table chosen at import
 * (rnnengine._kernels: CPUID, or RNNENGINE_ISA=serial|avx2|avx512). Every variant reads the
 * same packed weights, so switching variants needs no repacking.
 */
#ifndef RNNENGINE_KERNELS_H
#define RNNENGINE_KERNELS_H

#include <stddef.h>
#include <string.h>
#include "rnnengine/cpu.h"
#include "rnnengine/activations.h"
#include "rnnengine/cells.h"
#if RNN_X86
#include <immintrin.h>
#endif

typedef struct {
    /* One phase of one timestep for blocks [b0, b1) (cells.h: rnn_cell_phases). */
    void (*phase)(const rnn_cell_t *c, const rnn_step_io_t *io, int phase, int b0, int b1);
    /* Input projections + bias of M rows for blocks [b0, b1): out [HB][M][G][16]. */
    void (*xproj)(const rnn_cell_t *c, int M, const float *x, size_t ldx, float *out, int b0,
                  int b1);
    /* One activation over x[0:n], in place. */
    void (*activate)(rnn_activation_t a, float *x, size_t n);
    /* Roofline probes (bench/): sum of a buffer; iters rounds of 12 vector FMAs. */
    float (*read_sum)(const float *p, size_t n, int backward);
    float (*fma_loop)(long iters);
    int vector_width; /* floats per vector */
} rnn_kernels_t;

#define RNN_CAT_(name, isa) name##_f32_##isa
#define RNN_CAT(name, isa) RNN_CAT_(name, isa)
#define RNN_FN(name) RNN_CAT(name, RNN_ISA)

#include "rnnengine/vec_serial.h"
#include "rnnengine/math_impl.h"
#include "rnnengine/kernels_impl.h"
#include "rnnengine/vec_undef.h"

#if RNN_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#include "rnnengine/vec_avx2.h"
#include "rnnengine/math_impl.h"
#include "rnnengine/kernels_impl.h"
#include "rnnengine/vec_undef.h"
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f,avx512vl,avx512dq,avx512bw"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl,avx512dq,avx512bw")
#endif
#include "rnnengine/vec_avx512.h"
#include "rnnengine/math_impl.h"
#include "rnnengine/kernels_impl.h"
#include "rnnengine/vec_undef.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* RNN_X86 */

/* The variant's table, or NULL if it is not compiled in (non-x86 builds). */
static inline const rnn_kernels_t *rnn_kernels_for(int isa) {
    switch (isa) {
    case RNN_ISA_SERIAL:
        return &rnn_kernels_f32_serial;
#if RNN_X86
    case RNN_ISA_AVX2:
        return &rnn_kernels_f32_avx2;
    case RNN_ISA_AVX512:
        return &rnn_kernels_f32_avx512;
#endif
    default:
        return NULL;
    }
}

#endif
