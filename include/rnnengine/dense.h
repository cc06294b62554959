/* A dense head in one call: y[m, :] = act(x[m, :] @ w + b), w [K, N] row-major (rows ldw
 * floats apart), b [N] or NULL; act one of RNN_DENSE_* (Softmax and LogSoftmax over each row of N).
 *
 * Plain C loops written so that -O3 vectorises the inner one (contiguous over N, restrict
 * pointers): a streaming model's head is one row (M = 1) of a few hundred outputs, where a
 * BLAS call plus three NumPy ufuncs cost more in dispatch than the arithmetic.
 * Compiled per x86-64 level (dense_impl.h, once per variant) and chosen per call by the ISA
 * variant the caller passes: the one core.kernels runs (cpu.h; RNNENGINE_ISA forces it), so a
 * forced variant reaches the dense heads and the executor's products too.
 */
#ifndef RNNENGINE_DENSE_H
#define RNNENGINE_DENSE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rnnengine/cpu.h"

/* What row m's sums start from when there is no column bias: its row bias, or zero. */
#define RNN_DENSE_FILL(rb, m) ((rb) != NULL ? (rb)[m] : 0.0f)

enum rnn_dense_act {
    RNN_DENSE_NONE = 0,
    RNN_DENSE_RELU = 1,
    RNN_DENSE_SIGMOID = 2,
    RNN_DENSE_TANH = 3,
    RNN_DENSE_SOFTMAX = 4,
    RNN_DENSE_LOGSOFTMAX = 5
};

/* exp(x) for the activations, in plain C that vectorises (libm's expf does not): Cephes'
 * expf polynomial, relative error below 2e-7 on [-87, 87]; x is clamped to that range, so
 * exp neither overflows nor returns a subnormal, and sigmoid's smallest output is 1.6e-38,
 * a normal float (subnormal outputs fed back as state slow every later product ~20x);
 * NaN stays NaN. Rounding to nearest by adding and subtracting 1.5 * 2^23. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline float rnn_dense_exp(float x)
{
    float c = x == x ? x : 0.0f;
    c = c > 87.0f ? 87.0f : c;
    c = c < -87.0f ? -87.0f : c;
    const float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (c - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x == x ? p * scale : x;
}

#if defined(__GNUC__) || defined(__clang__)
/* The vectors of the row tiles (dense_impl.h), loaded and stored through memcpy (no
 * alignment assumed); each variant picks the width its registers hold. */
typedef float rnn_dense_v4 __attribute__((vector_size(16)));
typedef float rnn_dense_v8 __attribute__((vector_size(32)));
typedef float rnn_dense_v16 __attribute__((vector_size(64)));
#define RNN_DENSE_VLOAD(VT, p) ({ VT v_; memcpy(&v_, (p), sizeof v_); v_; })
#define RNN_DENSE_VSTORE(p, v) do { __typeof__(v) v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
#endif

/* Column panels: a constant w [K, N] for products of a row or a few (a stream's step) is
 * stored as panels of RNN_DENSE_PANEL columns (the last one narrower), each [K][pw]
 * contiguous, its columns padded with zeros to a multiple of 16 (rnn_dense_pack_panels). A
 * row's product then reads the weights once, in the order they are stored. */
#define RNN_DENSE_PANEL 64
static inline size_t rnn_dense_panel_cols(size_t N)
{
    return (N + 15) & ~(size_t)15;
}

/* The portable variant: baseline flags (SSE2 on x86-64, NEON on AArch64), 128-bit vectors
 * (wider ones are split into scalar code there: 30x slower). */
#define RNN_DN(name) name##_base
#define RNN_DN_TARGET
#define RNN_DN_VT rnn_dense_v4
#define RNN_DN_VT1 rnn_dense_v4
#define RNN_DN_ROW1_MAX 0
#define RNN_DN_WIDE 0
#include "rnnengine/dense_impl.h"
#undef RNN_DN
#undef RNN_DN_TARGET
#undef RNN_DN_VT
#undef RNN_DN_VT1
#undef RNN_DN_ROW1_MAX
#undef RNN_DN_WIDE

/* Per x86-64 level, not "arch=haswell": that names a CPU model, and GCC's clones dispatched
 * on it ran the baseline on AMD CPUs (the 48x256x258 product of a 16-stream Silero convolution
 * took 2.4 ms instead of 0.13 ms). fp-contract=fast fuses each product into its sum. */
#if RNN_X86 && defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__)
#define RNN_DENSE_LEVELS 1
#define RNN_DN(name) name##_v3
#define RNN_DN_TARGET __attribute__((target("arch=x86-64-v3"), optimize("fp-contract=fast")))
#define RNN_DN_VT rnn_dense_v8
#define RNN_DN_VT1 rnn_dense_v8
#define RNN_DN_ROW1_MAX 8
#define RNN_DN_WIDE 0
#include "rnnengine/dense_impl.h"
#undef RNN_DN
#undef RNN_DN_TARGET
#undef RNN_DN_VT
#undef RNN_DN_VT1
#undef RNN_DN_ROW1_MAX
#undef RNN_DN_WIDE

#define RNN_DN(name) name##_v4
#define RNN_DN_TARGET __attribute__((target("arch=x86-64-v4"), optimize("fp-contract=fast")))
#define RNN_DN_VT rnn_dense_v8
#define RNN_DN_VT1 rnn_dense_v16
#define RNN_DN_ROW1_MAX 16
#define RNN_DN_WIDE 1
#include "rnnengine/dense_impl.h"
#undef RNN_DN
#undef RNN_DN_TARGET
#undef RNN_DN_VT
#undef RNN_DN_VT1
#undef RNN_DN_ROW1_MAX
#undef RNN_DN_WIDE
#else
#define RNN_DENSE_LEVELS 0
#endif

/* The row length, in floats, a constant w [K, N] is stored with (zero columns added once,
 * where it is built): whole 32-column tiles, so the products below read every row as whole
 * vectors (no scalar tail, no per-call padded copy; a 128 x 257 head of one row ran 2.5x
 * faster padded). Any ldw >= N is accepted; this one is the fast one. */
static inline size_t rnn_dense_ldw(size_t N)
{
    return (N + 31) & ~(size_t)31;
}

/* y[M, N] = act(x[M, K] @ w + b), w's rows ldw >= N floats apart (rnn_dense_ldw), b [N] or
 * NULL, or with a bias per row rb [M] (b NULL then; dense_impl.h), in the code of the
 * variant ``isa`` (enum rnn_isa): avx512 and amx run the x86-64-v4 code, avx2 the v3 code,
 * the rest the portable code. A variant this CPU cannot run falls back to the portable code
 * rather than fault. */
static void rnn_dense_rows_bias(const float *x, size_t M, size_t K, const float *w, size_t ldw,
                                size_t N, const float *b, const float *rb, float *y, int act,
                                int isa)
{
#if RNN_DENSE_LEVELS
    if ((isa == RNN_ISA_AVX512 || isa == RNN_ISA_AMX) && rnn_cpu_supports(RNN_ISA_AVX512)) {
        rnn_dense_run_v4(x, M, K, w, ldw, N, b, rb, y, act);
        return;
    }
    if (isa == RNN_ISA_AVX2 && rnn_cpu_supports(RNN_ISA_AVX2)) {
        rnn_dense_run_v3(x, M, K, w, ldw, N, b, rb, y, act);
        return;
    }
#endif
    (void)isa;
    rnn_dense_run_base(x, M, K, w, ldw, N, b, rb, y, act);
}

static void rnn_dense(const float *x, size_t M, size_t K, const float *w, size_t ldw, size_t N,
                      const float *b, float *y, int act, int isa)
{
    rnn_dense_rows_bias(x, M, K, w, ldw, N, b, NULL, y, act, isa);
}

/* Products of fewer rows than this run from panels where the weights are constant (the row
 * tiles above start at four rows, each weight loaded once for all of them). */
#define RNN_DENSE_PANEL_ROWS 4

/* w [K, N] row-major into wp, K * rnn_dense_panel_cols(N) floats: the column panels. */
static void rnn_dense_pack_panels(const float *w, size_t K, size_t N, float *wp)
{
    const size_t Np = rnn_dense_panel_cols(N);
    for (size_t p0 = 0; p0 < Np; p0 += RNN_DENSE_PANEL) {
        const size_t pw = Np - p0 < RNN_DENSE_PANEL ? Np - p0 : RNN_DENSE_PANEL;
        const size_t cols = N - p0 < pw ? N - p0 : pw;
        float *dst = wp + K * p0;
        for (size_t k = 0; k < K; k++) {
            memcpy(dst + k * pw, w + k * N + p0, cols * sizeof(float));
            memset(dst + k * pw + cols, 0, (pw - cols) * sizeof(float));
        }
    }
}

/* rnn_dense on weights packed by rnn_dense_pack_panels, one row at a time: the same bits. */
static void rnn_dense_panels(const float *x, size_t M, size_t K, const float *wp, size_t N,
                             const float *b, float *y, int act, int isa)
{
    for (size_t m = 0; m < M; m++) {
#if RNN_DENSE_LEVELS
        if ((isa == RNN_ISA_AVX512 || isa == RNN_ISA_AMX) && rnn_cpu_supports(RNN_ISA_AVX512)) {
            rnn_dense_panel_row_v4(x + m * K, K, wp, N, b, 0.0f, y + m * N, act);
            continue;
        }
        if (isa == RNN_ISA_AVX2 && rnn_cpu_supports(RNN_ISA_AVX2)) {
            rnn_dense_panel_row_v3(x + m * K, K, wp, N, b, 0.0f, y + m * N, act);
            continue;
        }
#endif
        rnn_dense_panel_row_base(x + m * K, K, wp, N, b, 0.0f, y + m * N, act);
    }
    (void)isa;
}

#endif
