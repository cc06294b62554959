/* A 2-D convolution in one call, any group, stride, dilation and pads, bias and ReLU fused:
 *   y[n, g*Cog + m, oh, ow] = act(b[g*Cog + m] + sum_{c < Cg, kh, kw} w[g*Cog + m, c, kh, kw]
 *                             * x[n, g*Cg + c, oh*sh + kh*dh - pt, ow*sw + kw*dw - pl])
 * with x (N, C, H, W), C = G * Cg, w (M, Cg, KH, KW), M = G * Cog, y (N, M, Ho, Wo); inputs
 * outside the image read zero (the bottom and right pads only show in Ho, Wo, which the
 * caller computes). A 1-D convolution is the case H = KH = 1. With upsampling factors
 * uh, uw > 1 the input is first spread out, uh - 1 rows (uw - 1 columns) of zeros between
 * two of its rows (columns): x[.., ih, iw] sits at padded position (ih*uh + pt, iw*uw + pl).
 * That makes a transposed convolution of stride (uh, uw) a convolution of stride 1 (the
 * caller flips and transposes its weights and sets the pads to the kernel's reach minus
 * the transposed convolution's pads).
 *
 * Why not im2col + a product (what the executor planned before): the window gather writes
 * KH * KW copies of the input and the product reads them back. Here the output row is the
 * vector axis: each sample's input is copied once into a zero-padded scratch image whose
 * rows are split by the horizontal stride's phase (column j of phase p holds padded column
 * j * sw + p), so that for every (c, kh, kw) the inputs of consecutive output columns are
 * one contiguous load. A tile holds up to 8 output channels (the weights packed in blocks of
 * ``mr`` channels by rnn_conv2d_pack, broadcast) times up to 4 vectors of output columns in
 * registers; bias and ReLU are applied as the tile is stored.
 *
 * ISA variants as conv.h's: AVX-512 (16 floats per vector), AVX2+FMA (8), portable (4),
 * picked per call from the variant the recurrent kernels run (``isa``, enum rnn_isa,
 * through rnn_conv_width_for); the packed weights and the scratch do not depend on it. The
 * caller (src/rnnengine/_conv.pyx) checks every size first; rnn_conv2d_sizes_ok repeats
 * the checks and the kernel refuses sizes that do not fit.
 */
#ifndef RNNENGINE_CONV2D_H
#define RNNENGINE_CONV2D_H

#include "rnnengine/conv.h"

#define RNN_C2_MR_MAX 8     /* output channels per tile */
#define RNN_C2_NV_MAX 4     /* vectors of output columns per tile */
#define RNN_C2_VL_MAX 16    /* the widest vector: the scratch rows are padded for it */
#define RNN_C2_KW_STACK 64  /* column offsets of kernels up to this wide live on the stack */

typedef struct {
    size_t N, C, H, W;            /* x (N, C, H, W) */
    size_t M, G, KH, KW;          /* w (M, C / G, KH, KW) */
    size_t sh, sw, dh, dw;        /* strides, dilations */
    size_t pt, pl;                /* zeros above row 0 and left of column 0 */
    size_t Ho, Wo;                /* output rows and columns */
    int relu;
    const rnn_cancel_t *cancel;   /* asked between output rows; NULL: never stop */
    size_t uh, uw;                /* input upsampling (1, 1: none) */
} rnn_conv2d_t;

/* Output channels per packed block for Cog channels per group: the smallest of 1, 2, 4, 8
 * that holds them, else 8. */
static inline size_t rnn_conv2d_mr(size_t Cog) {
    size_t mr = 1;
    while (mr < Cog && mr < RNN_C2_MR_MAX) mr *= 2;
    return mr;
}

static inline size_t rnn_conv2d_blocks(size_t Cog) {
    return (Cog + rnn_conv2d_mr(Cog) - 1) / rnn_conv2d_mr(Cog);
}

/* Floats in the packed bias (G * blocks * mr) and weights (that times Cg * KH * KW); 0
 * when a size overflows. */
static inline size_t rnn_conv2d_packed_bias(size_t G, size_t Cog) {
    size_t n;
    if (!rnn_conv_mul(G, rnn_conv2d_blocks(Cog), &n) || !rnn_conv_mul(n, rnn_conv2d_mr(Cog), &n))
        return 0;
    return n;
}

static inline size_t rnn_conv2d_packed_size(size_t G, size_t Cog, size_t CK) {
    size_t n;
    if (!rnn_conv_mul(rnn_conv2d_packed_bias(G, Cog), CK, &n)) return 0;
    return n;
}

/* w (G * Cog, CK) row-major -> wp: block (g, j) holds channels g*Cog + [j*mr, (j+1)*mr) as
 * (CK, mr), channels past Cog zero; b (G * Cog) or NULL -> bp (G * blocks * mr). */
static void rnn_conv2d_pack(const float *w, const float *b, size_t G, size_t Cog, size_t CK,
                            float *wp, size_t wp_len, float *bp, size_t bp_len) {
    const size_t mr = rnn_conv2d_mr(Cog), blocks = rnn_conv2d_blocks(Cog);
    RNN_ASSERT(wp_len == G * blocks * mr * CK && bp_len == G * blocks * mr);
    memset(wp, 0, wp_len * sizeof *wp);
    memset(bp, 0, bp_len * sizeof *bp);
    for (size_t g = 0; g < G; g++)
        for (size_t m = 0; m < Cog; m++) {
            const size_t block = g * blocks + m / mr;
            float *dst = wp + block * CK * mr + m % mr;
            const float *src = w + (g * Cog + m) * CK;
            for (size_t k = 0; k < CK; k++) dst[k * mr] = src[k];
            if (b != NULL) bp[block * mr + m % mr] = b[g * Cog + m];
        }
}

/* The scratch image's geometry: Hp padded rows of sw phases of Wq columns each (a row
 * padded for the widest vector's last tile and the kernel's reach). 0 when it overflows. */
static inline size_t rnn_conv2d_hp(const rnn_conv2d_t *cv) {
    return (cv->Ho - 1) * cv->sh + (cv->KH - 1) * cv->dh + 1;
}

static inline size_t rnn_conv2d_wq(const rnn_conv2d_t *cv) {
    return (cv->Wo + RNN_C2_VL_MAX - 1) / RNN_C2_VL_MAX * RNN_C2_VL_MAX
           + (cv->KW - 1) * cv->dw / cv->sw;
}

/* 1 when every size in cv fits the buffers (x_len, wp_len, bp_len, scratch_len, y_len
 * floats) and no index the kernel forms wraps; 0 otherwise. */
static int rnn_conv2d_sizes_ok(const rnn_conv2d_t *cv, size_t x_len, size_t wp_len,
                               size_t bp_len, size_t scratch_len, size_t y_len) {
    const size_t big = (size_t)PTRDIFF_MAX / 4;
    size_t n, CK, span;
    if (cv->G < 1 || cv->C % cv->G || cv->M % cv->G || cv->KH < 1 || cv->KW < 1
            || cv->sh < 1 || cv->sw < 1 || cv->dh < 1 || cv->dw < 1 || cv->uh < 1
            || cv->uw < 1 || cv->Ho < 1
            || cv->Wo < 1 || cv->C < 1 || cv->M < 1)
        return 0;
    /* every dimension and each reach (a window's span plus the stride's) below big, so
     * the sums and the products below are checked one at a time */
    if (cv->N > big || cv->C > big || cv->H > big || cv->W > big || cv->M > big
            || cv->pt > big || cv->pl > big || cv->Ho > big || cv->Wo > big)
        return 0;
    if (!rnn_conv_mul(cv->H ? cv->H - 1 : 0, cv->uh, &n) || n > big
            || !rnn_conv_mul(cv->W ? cv->W - 1 : 0, cv->uw, &n) || n > big)
        return 0;
    if (!rnn_conv_mul(cv->KH - 1, cv->dh, &span) || span > big
            || !rnn_conv_mul(cv->Ho - 1, cv->sh, &n) || n > big)
        return 0;
    if (!rnn_conv_mul(cv->KW - 1, cv->dw, &span) || span > big
            || !rnn_conv_mul(cv->Wo - 1, cv->sw, &n) || n > big)
        return 0;
    if (!rnn_conv_mul(cv->N, cv->C, &n) || !rnn_conv_mul(n, cv->H, &n)
            || !rnn_conv_mul(n, cv->W, &n) || n != x_len)
        return 0;
    if (!rnn_conv_mul(cv->N, cv->M, &n) || !rnn_conv_mul(n, cv->Ho, &n)
            || !rnn_conv_mul(n, cv->Wo, &n) || n != y_len)
        return 0;
    if (!rnn_conv_mul(cv->C / cv->G, cv->KH, &CK) || !rnn_conv_mul(CK, cv->KW, &CK))
        return 0;
    n = rnn_conv2d_packed_size(cv->G, cv->M / cv->G, CK);
    if (n == 0 || n != wp_len || bp_len != rnn_conv2d_packed_bias(cv->G, cv->M / cv->G))
        return 0;
    if (!rnn_conv_mul(cv->C, rnn_conv2d_hp(cv), &n) || !rnn_conv_mul(n, cv->sw, &n)
            || !rnn_conv_mul(n, rnn_conv2d_wq(cv), &n) || n != scratch_len || n > big)
        return 0;
    return 1;
}

/* Floats of scratch rnn_conv2d needs for cv (0: the sizes overflow). */
static inline size_t rnn_conv2d_scratch_size(const rnn_conv2d_t *cv) {
    size_t n;
    if (cv->Ho < 1 || cv->sw < 1 || !rnn_conv_mul(cv->C, rnn_conv2d_hp(cv), &n)
            || !rnn_conv_mul(n, cv->sw, &n) || !rnn_conv_mul(n, rnn_conv2d_wq(cv), &n))
        return 0;
    return n;
}

/* Sample xn (C, H, W) into the scratch image: every element written, zero where the
 * padded image is padding, a gap of the upsampling, or past the input's right edge. */
static void rnn_conv2d_fill(const rnn_conv2d_t *cv, const float *xn, float *s) {
    const size_t Hp = rnn_conv2d_hp(cv), Wq = rnn_conv2d_wq(cv), sw = cv->sw;
    for (size_t c = 0; c < cv->C; c++)
        for (size_t r = 0; r < Hp; r++) {
            float *row = s + (c * Hp + r) * sw * Wq;
            const ptrdiff_t at = (ptrdiff_t)r - (ptrdiff_t)cv->pt;
            const ptrdiff_t ih = at / (ptrdiff_t)cv->uh;
            if (at < 0 || at % (ptrdiff_t)cv->uh || ih >= (ptrdiff_t)cv->H) {
                memset(row, 0, sw * Wq * sizeof *row);
                continue;
            }
            const float *src = xn + (c * cv->H + (size_t)ih) * cv->W;
            if (sw == 1 && cv->uw == 1) {
                /* columns [pl, pl + W) of the padded row, clipped to the Wq it keeps */
                const size_t lead = cv->pl < Wq ? cv->pl : Wq;
                const size_t n = cv->W < Wq - lead ? cv->W : Wq - lead;
                memset(row, 0, lead * sizeof *row);
                memcpy(row + lead, src, n * sizeof *row);
                memset(row + lead + n, 0, (Wq - lead - n) * sizeof *row);
                continue;
            }
            memset(row, 0, sw * Wq * sizeof *row);
            for (size_t t = 0; t < cv->W; t++) {
                const size_t j = t * cv->uw + cv->pl, q = j / sw;
                if (q < Wq) row[(j % sw) * Wq + q] = src[t];
            }
        }
}

/* The variants: rnn_c2_rows_{v4,v8,v16}. */
#define RNN_C2_VL 4
#define RNN_C2_ACC 8    /* accumulators a tile may keep (16 vector registers) */
#define RNN_C2_NAME(x) x##_v4
#define RNN_C2_TARGET
#include "rnnengine/conv2d_impl.h"
#undef RNN_C2_VL
#undef RNN_C2_ACC
#undef RNN_C2_NAME
#undef RNN_C2_TARGET

#if RNN_X86
#define RNN_C2_VL 8
#define RNN_C2_ACC 8
#define RNN_C2_NAME(x) x##_v8
#define RNN_C2_TARGET __attribute__((target("avx2,fma")))
#include "rnnengine/conv2d_impl.h"
#undef RNN_C2_VL
#undef RNN_C2_ACC
#undef RNN_C2_NAME
#undef RNN_C2_TARGET

#define RNN_C2_VL 16
#define RNN_C2_ACC 16   /* 32 vector registers */
#define RNN_C2_NAME(x) x##_v16
#define RNN_C2_TARGET __attribute__((target("avx2,fma,avx512f")))
#include "rnnengine/conv2d_impl.h"
#undef RNN_C2_VL
#undef RNN_C2_ACC
#undef RNN_C2_NAME
#undef RNN_C2_TARGET
#endif

/* y = conv(x) with weights and bias packed by rnn_conv2d_pack, in ISA variant ``isa``;
 * scratch: rnn_conv2d_scratch_size(cv) floats of any content (overwritten). The *_len are
 * the buffers' sizes in floats. Returns 0; -1 when the column offsets cannot be allocated;
 * -2 when the sizes do not fit (rnn_conv2d_sizes_ok); 1 when cv->cancel asked to stop (y
 * is then partly written). */
static int rnn_conv2d(const rnn_conv2d_t *cv, const float *x, size_t x_len, const float *wp,
                      size_t wp_len, const float *bp, size_t bp_len, float *scratch,
                      size_t scratch_len, float *y, size_t y_len, int isa) {
    if (!rnn_conv2d_sizes_ok(cv, x_len, wp_len, bp_len, scratch_len, y_len)) return -2;
    if (cv->N == 0) return 0;
    const size_t Wq = rnn_conv2d_wq(cv);
    size_t stack_off[RNN_C2_KW_STACK];
    size_t *off = stack_off;
    if (cv->KW > RNN_C2_KW_STACK) {
        off = (size_t *)malloc(cv->KW * sizeof *off);
        if (off == NULL) return -1;
    }
    /* kernel column kw reads phase (kw * dw) % sw at column offset (kw * dw) / sw */
    for (size_t kw = 0; kw < cv->KW; kw++)
        off[kw] = (kw * cv->dw) % cv->sw * Wq + kw * cv->dw / cv->sw;
    const size_t width = rnn_conv_width_for(isa);
    const size_t Cg = cv->C / cv->G;
    /* multiply-adds per output row, and so rows between two cancel checks */
    size_t row_macs;
    if (!rnn_conv_mul(cv->M, Cg * cv->KH * cv->KW, &row_macs)
            || !rnn_conv_mul(row_macs, cv->Wo, &row_macs))
        row_macs = RNN_CONV_CHECK_MACS;
    const size_t rows_per_check = row_macs < RNN_CONV_CHECK_MACS
                                  ? RNN_CONV_CHECK_MACS / row_macs : 1;
    int stopped = 0;
    const rnn_fpenv_t env = rnn_fpenv_enter();
    for (size_t n = 0; n < cv->N && !stopped; n++) {
        rnn_conv2d_fill(cv, x + n * cv->C * cv->H * cv->W, scratch);
        float *yn = y + n * cv->M * cv->Ho * cv->Wo;
        for (size_t oh0 = 0; oh0 < cv->Ho; oh0 += rows_per_check) {
            const size_t oh1 = cv->Ho - oh0 < rows_per_check ? cv->Ho : oh0 + rows_per_check;
#if RNN_X86
            if (width == 32)
                rnn_c2_rows_v16(cv, scratch, off, wp, bp, yn, oh0, oh1);
            else if (width == 16)
                rnn_c2_rows_v8(cv, scratch, off, wp, bp, yn, oh0, oh1);
            else
#endif
                rnn_c2_rows_v4(cv, scratch, off, wp, bp, yn, oh0, oh1);
            if ((oh1 < cv->Ho || n + 1 < cv->N) && rnn_cancelled(cv->cancel)) {
                stopped = 1;
                break;
            }
        }
    }
    rnn_fpenv_leave(env);
    (void)width;
    if (off != stack_off) free(off);
    return stopped;
}

#endif
