/* A 1-D convolution in one call, bias and ReLU fused:
 *   y[n, m, o] = act(b[m] + sum_{c, k} w[m, c, k] * x[n, c, o * stride + k * dilation - pad])
 * with x (N, C, L), w (M, C, KW), y (N, M, Lout); positions outside [0, L) read zero (the
 * end padding only shows in Lout, which the caller computes). groups = 1.
 *
 * Why not im2col + a BLAS call: a streaming model's convolutions are small (Silero: 1-4
 * output positions, 64-258 channels), where NumPy's gather, matmul and bias add cost more in
 * dispatch than the arithmetic. Here a group of up to RNN_CONV_NR output positions (across
 * the batch) is gathered into a small column buffer, then multiplied with the weights packed
 * once (rnn_conv_pack) in panels of 2 vectors of output channels; bias and ReLU are applied
 * as the panel is stored.
 *
 * ISA variants (cpu.h): AVX-512 (16 floats per vector), AVX2+FMA (8) and portable (4: SSE2,
 * NEON, or plain loops without GCC/Clang vectors). The weights are packed for one panel
 * width, 2 vectors: rnn_conv_width_for() picks it at load from the ISA variant the
 * recurrent kernels run (RNNENGINE_ISA forces it), and rnn_conv1d runs the variant of that
 * width. The caller (src/rnnengine/core/conv.pyx) checks every shape first; the asserts
 * repeat the buffer checks in debug and sanitizer builds.
 */
#ifndef RNNENGINE_CONV_H
#define RNNENGINE_CONV_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <stdint.h>

#include "rnnengine/assert.h"
#include "rnnengine/cancel.h"
#include "rnnengine/cpu.h"
#include "rnnengine/fpenv.h"

#define RNN_CONV_NR 6          /* output positions per column group */
#define RNN_CONV_MR_MAX 32     /* the widest panel (AVX-512) */
#define RNN_CONV_STACK 4096    /* column buffers up to this many floats live on the stack */
#define RNN_CONV_CHUNK 64      /* column groups gathered at a time */
/* At most this many multiply-adds between two cancel checks (~10-50 ms on one core). */
#define RNN_CONV_CHECK_MACS ((size_t)1 << 27)

/* GCC/Clang generic vectors; -DRNN_CONV_VECTORS=0 builds the plain loops other compilers
 * get (tests/core/test_conv_kernel.py builds both, and the portable-only -DRNN_X86=0). */
#ifndef RNN_CONV_VECTORS
#if defined(__GNUC__) || defined(__clang__)
#define RNN_CONV_VECTORS 1
#else
#define RNN_CONV_VECTORS 0
#endif
#endif

typedef struct {
    size_t N, C, L;                  /* x (N, C, L) */
    size_t M, KW;                    /* w (M, C, KW) */
    size_t stride, dilation, pad;    /* pad: zeros before position 0 */
    size_t Lout;                     /* output positions per sample */
    int relu;
    const rnn_cancel_t *cancel;      /* asked between chunks; NULL: never stop */
} rnn_conv1d_t;

/* a * b into *out; 0 when it overflows size_t. */
static inline int rnn_conv_mul(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static inline size_t rnn_conv_panels(size_t M, size_t width) {
    return (M + width - 1) / width;
}

/* Floats in the packed weights (and, over C * KW = 1, in the packed bias). */
static inline size_t rnn_conv_packed_size(size_t M, size_t CK, size_t width) {
    return rnn_conv_panels(M, width) * width * CK;
}

/* The panel width (2 vectors) of variant ``isa`` (enum rnn_isa): avx512 and amx 32, avx2
 * 16, the rest 8; a variant this CPU cannot run gets the widest one it can. */
static inline size_t rnn_conv_width_for(int isa) {
    if ((isa == RNN_ISA_AVX512 || isa == RNN_ISA_AMX) && rnn_cpu_supports(RNN_ISA_AVX512))
        return 32;
    if (isa != RNN_ISA_SERIAL && isa != RNN_ISA_NEON && rnn_cpu_supports(RNN_ISA_AVX2))
        return 16;
    return 8;
}

/* 1 if rnn_conv1d can run weights packed for ``width`` on this CPU. */
static inline int rnn_conv_width_ok(size_t width) {
    if (width == 8) return 1;
    if (width == 16) return rnn_cpu_supports(RNN_ISA_AVX2);
    if (width == 32) return rnn_cpu_supports(RNN_ISA_AVX512);
    return 0;
}

/* w (M, CK) row-major -> wp: panel p holds channels [p * width, (p + 1) * width) as
 * (CK, width), channels past M zero; b (M) or NULL -> bp (panels * width), zero-padded. */
static void rnn_conv_pack(const float *w, const float *b, size_t M, size_t CK, size_t width,
                          float *wp, size_t wp_len, float *bp, size_t bp_len) {
    const size_t panels = rnn_conv_panels(M, width);
    RNN_ASSERT(wp_len == panels * width * CK && bp_len == panels * width);
    (void)wp_len;
    (void)bp_len;
    memset(wp, 0, panels * width * CK * sizeof *wp);
    memset(bp, 0, panels * width * sizeof *bp);
    for (size_t m = 0; m < M; m++) {
        float *dst = wp + (m / width) * width * CK + m % width;
        for (size_t k = 0; k < CK; k++) dst[k * width] = w[m * CK + k];
        if (b != NULL) bp[m] = b[m];
    }
}

/* The columns j0 .. j0 + nr - 1 (j = n * Lout + o) as cols[(c * KW + k) * NR + r]. */
static void rnn_conv_columns(const rnn_conv1d_t *cv, const float *x, size_t j0, int nr,
                             float *cols) {
    const ptrdiff_t L = (ptrdiff_t)cv->L;
    for (int r = 0; r < nr; r++) {
        const size_t j = j0 + (size_t)r, n = j / cv->Lout, o = j % cv->Lout;
        const float *xn = x + n * cv->C * cv->L;
        const ptrdiff_t start = (ptrdiff_t)(o * cv->stride) - (ptrdiff_t)cv->pad;
        float *col = cols + r;
        for (size_t c = 0; c < cv->C; c++) {
            const float *xc = xn + c * cv->L;
            for (size_t k = 0; k < cv->KW; k++) {
                const ptrdiff_t t = start + (ptrdiff_t)(k * cv->dilation);
                *col = (t >= 0 && t < L) ? xc[t] : 0.0f;
                col += RNN_CONV_NR;
            }
        }
    }
}

/* tile[r * width + i] -> y[n, m0 + i, o] for the real channels, ReLU applied (NaN kept). */
static void rnn_conv_store(const rnn_conv1d_t *cv, const float *tile, size_t width, int nr,
                           size_t m0, size_t j0, float *y) {
    const size_t mend = cv->M < m0 + width ? cv->M : m0 + width, Lout = cv->Lout;
    for (int r = 0; r < nr; r++) {
        const size_t j = j0 + (size_t)r;
        float *yo = y + (j / Lout) * cv->M * Lout + j % Lout;
        const float *t = tile + (size_t)r * width - m0;
        if (cv->relu) {
            for (size_t m = m0; m < mend; m++) {
                const float v = t[m];
                yo[m * Lout] = v > 0.0f ? v : (v == v ? 0.0f : v);
            }
        } else {
            for (size_t m = m0; m < mend; m++) yo[m * Lout] = t[m];
        }
    }
}

/* The variants: rnn_cv_panels_{v4,v8,v16}. */
#define RNN_CV_VL 4
#define RNN_CV_NAME(x) x##_v4
#define RNN_CV_TARGET
#include "rnnengine/conv_impl.h"
#undef RNN_CV_VL
#undef RNN_CV_NAME
#undef RNN_CV_TARGET

#if RNN_X86
#define RNN_CV_VL 8
#define RNN_CV_NAME(x) x##_v8
#define RNN_CV_TARGET __attribute__((target("avx2,fma")))
#include "rnnengine/conv_impl.h"
#undef RNN_CV_VL
#undef RNN_CV_NAME
#undef RNN_CV_TARGET

#define RNN_CV_VL 16
#define RNN_CV_NAME(x) x##_v16
#define RNN_CV_TARGET __attribute__((target("avx2,fma,avx512f")))
#include "rnnengine/conv_impl.h"
#undef RNN_CV_VL
#undef RNN_CV_NAME
#undef RNN_CV_TARGET
#endif

/* 1 when every size in cv fits the buffers (x_len, wp_len, bp_len, y_len floats) and
 * every index the kernel forms (o * stride + k * dilation - pad, the column buffer)
 * fits its type without wrapping; 0 otherwise. The caller checks these too: this is
 * the kernel not trusting it. */
static int rnn_conv_sizes_ok(const rnn_conv1d_t *cv, size_t x_len, size_t wp_len,
                             size_t bp_len, size_t width, size_t y_len) {
    size_t xs, ys, CK, wn, J, kspan, ospan, cols;
    const size_t big = (size_t)PTRDIFF_MAX;
    if (!rnn_conv_width_ok(width) || cv->stride < 1 || cv->dilation < 1 || cv->KW < 1)
        return 0;
    if (!rnn_conv_mul(cv->N, cv->C, &xs) || !rnn_conv_mul(xs, cv->L, &xs) || xs != x_len)
        return 0;
    if (!rnn_conv_mul(cv->N, cv->M, &ys) || !rnn_conv_mul(ys, cv->Lout, &ys) || ys != y_len)
        return 0;
    if (!rnn_conv_mul(cv->C, cv->KW, &CK) || cv->M > big - width
            || !rnn_conv_mul(rnn_conv_panels(cv->M, width) * width, CK, &wn) || wn != wp_len
            || bp_len != rnn_conv_panels(cv->M, width) * width)
        return 0;
    if (!rnn_conv_mul(cv->N, cv->Lout, &J) || J > big - RNN_CONV_NR)
        return 0;
    if (!rnn_conv_mul(cv->KW - 1, cv->dilation, &kspan)
            || !rnn_conv_mul(cv->Lout ? cv->Lout - 1 : 0, cv->stride, &ospan))
        return 0;
    if (kspan > big || ospan > big - kspan || cv->pad > big || cv->L > big)
        return 0;
    return rnn_conv_mul(CK, RNN_CONV_NR * RNN_CONV_CHUNK, &cols);
}

/* y = conv(x) with weights packed by rnn_conv_pack for ``width``; the *_len are the
 * buffers' sizes in floats. Returns 0; -1 when the column buffer cannot be allocated; -2
 * when the sizes do not fit (rnn_conv_sizes_ok); 1 when cv->cancel asked to stop (y is
 * then partly written). */
static int rnn_conv1d(const rnn_conv1d_t *cv, const float *x, size_t x_len, const float *wp,
                      size_t wp_len, const float *bp, size_t bp_len, size_t width, float *y,
                      size_t y_len) {
    const size_t CK = cv->C * cv->KW, J = cv->N * cv->Lout;
    RNN_ASSERT(x_len == cv->N * cv->C * cv->L);
    RNN_ASSERT(wp_len == rnn_conv_packed_size(cv->M, CK, width));
    RNN_ASSERT(bp_len == rnn_conv_panels(cv->M, width) * width);
    RNN_ASSERT(y_len == cv->N * cv->M * cv->Lout);
    RNN_ASSERT(rnn_conv_width_ok(width) && cv->stride >= 1 && cv->dilation >= 1);
    if (!rnn_conv_sizes_ok(cv, x_len, wp_len, bp_len, width, y_len)) return -2;
    /* Columns are gathered RNN_CONV_CHUNK groups at a time: the buffer stays bounded
     * (and in L2) however long the input; each chunk streams the weights once more. A
     * chunk is also the unit between cancel checks, so it holds at most
     * RNN_CONV_CHECK_MACS multiply-adds (down to one group for huge weights). */
    const size_t groups = (J + RNN_CONV_NR - 1) / RNN_CONV_NR;
    const size_t group_macs = cv->M * CK * RNN_CONV_NR;   /* no overflow: M * CK <= wp_len */
    size_t chunk = groups < RNN_CONV_CHUNK ? groups : RNN_CONV_CHUNK;
    if (group_macs > 0 && chunk > RNN_CONV_CHECK_MACS / group_macs)
        chunk = RNN_CONV_CHECK_MACS / group_macs > 0 ? RNN_CONV_CHECK_MACS / group_macs : 1;
    const size_t n_cols = chunk * CK * RNN_CONV_NR;
    float stack_cols[RNN_CONV_STACK];
    float tile[RNN_CONV_NR * RNN_CONV_MR_MAX];
    float *cols = stack_cols;
    if (n_cols > RNN_CONV_STACK) {
        cols = (float *)malloc(n_cols * sizeof *cols);
        if (cols == NULL) return -1;
    }
    int stopped = 0;
    const rnn_fpenv_t env = rnn_fpenv_enter();
    for (size_t base = 0; base < J; base += chunk * RNN_CONV_NR) {
        const size_t Jc = J - base < chunk * RNN_CONV_NR ? J - base : chunk * RNN_CONV_NR;
        for (size_t j0 = 0; j0 < Jc; j0 += RNN_CONV_NR) {
            const int nr = (int)(Jc - j0 < RNN_CONV_NR ? Jc - j0 : RNN_CONV_NR);
            RNN_ASSERT((j0 / RNN_CONV_NR + 1) * CK * RNN_CONV_NR <= n_cols);
            rnn_conv_columns(cv, x, base + j0, nr, cols + (j0 / RNN_CONV_NR) * CK * RNN_CONV_NR);
        }
#if RNN_X86
        if (width == 32)
            rnn_cv_panels_v16(cv, cols, base, Jc, wp, bp, tile, y);
        else if (width == 16)
            rnn_cv_panels_v8(cv, cols, base, Jc, wp, bp, tile, y);
        else
#endif
            rnn_cv_panels_v4(cv, cols, base, Jc, wp, bp, tile, y);
        if (base + Jc < J && rnn_cancelled(cv->cancel)) {
            stopped = 1;
            break;
        }
    }
    rnn_fpenv_leave(env);
    if (cols != stack_cols) free(cols);
    return stopped;
}

#endif
