/* The executor's operator kernels: what a whole model's step runs between its recurrent
 * nodes, over buffers whose shapes were fixed when the step was planned (executor.py builds
 * the plan, _exec.pyx runs it). Everything data-dependent was decided at plan time: index
 * maps for data movement, broadcast strides, reduction geometry. The kernels trust only what
 * the plan computed from the buffers' sizes; _exec.pyx checks every offset against the
 * buffer it indexes before a plan is accepted.
 */
#ifndef RNNENGINE_EXEC_H
#define RNNENGINE_EXEC_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rnnengine/dense.h"

#define RNN_EXEC_MAXD 8

/* Data movement (Transpose, Slice, Concat, Split, Pad, Expand, Gather/ScatterND with
 * constant indices, ...) as groups of runs: for j < reps, i < len,
 * dst[dst + j * dst_step + i] = src[src_off + j * src_step + i * src_stride], element size es.
 * Plans compress the element-wise index map into the fewest groups (a transpose is one group
 * per row of the output, not one run per element). */
typedef struct {
    int64_t dst, src_off, len, src_stride;
    int64_t src;  /* which source buffer */
    int64_t reps, dst_step, src_step;
} rnn_run;

static inline void rnn_exec_move(char *dst, char *const *srcs, const rnn_run *runs, int64_t n,
                                 int64_t es) {
    for (int64_t r = 0; r < n; r++) {
        const rnn_run *q = &runs[r];
        const int64_t len = q->len, st = q->src_stride;
        for (int64_t j = 0; j < q->reps; j++) {
            char *d = dst + (q->dst + j * q->dst_step) * es;
            const char *s = srcs[q->src] + (q->src_off + j * q->src_step) * es;
            if (st == 1 && (es != 4 || len > 16)) {
                memmove(d, s, (size_t)(len * es));
            } else if (es == 4) {     /* short runs (a window's row) or strided: no call */
                float *df = (float *)(void *)d;
                const float *sf = (const float *)(const void *)s;
                for (int64_t i = 0; i < len; i++) df[i] = sf[i * st];
            } else {
                for (int64_t i = 0; i < len; i++) memcpy(d + i * es, s + i * st * es, (size_t)es);
            }
        }
    }
}

/* Broadcast element-wise operators, the shapes collapsed at plan time: nd dims, the innermost
 * last; strides in elements (0 where an input is broadcast) of up to three inputs a, b, c. */
enum {
    RNN_BIN_ADD = 0, RNN_BIN_SUB, RNN_BIN_MUL, RNN_BIN_DIV, RNN_BIN_POW, RNN_BIN_MAX,
    RNN_BIN_MIN, RNN_BIN_PRELU, RNN_BIN_FMOD, RNN_BIN_COUNT
};

typedef struct {
    int64_t nd;
    int64_t shape[RNN_EXEC_MAXD];
    int64_t sa[RNN_EXEC_MAXD], sb[RNN_EXEC_MAXD], sc[RNN_EXEC_MAXD];
} rnn_bcast;

/* The next innermost row of a broadcast: advances idx and the inputs' offsets o[3] over the
 * outer dims; 0 when every row has been visited. */
static inline int rnn_bcast_next(const rnn_bcast *g, int64_t *idx, int64_t *o) {
    for (int64_t d = g->nd - 2; d >= 0; d--) {
        idx[d]++;
        o[0] += g->sa[d];
        o[1] += g->sb[d];
        o[2] += g->sc[d];
        if (idx[d] < g->shape[d]) return 1;
        o[0] -= g->sa[d] * g->shape[d];
        o[1] -= g->sb[d] * g->shape[d];
        o[2] -= g->sc[d] * g->shape[d];
        idx[d] = 0;
    }
    return 0;
}

static inline float rnn_bin1(int op, float a, float b) {
    switch (op) {
    case RNN_BIN_ADD: return a + b;
    case RNN_BIN_SUB: return a - b;
    case RNN_BIN_MUL: return a * b;
    case RNN_BIN_DIV: return a / b;
    case RNN_BIN_POW: return b == 2.0f ? a * a : (b == 0.5f ? sqrtf(a) : powf(a, b));
    case RNN_BIN_MAX: return (a != a || b != b) ? NAN : (a > b ? a : b);
    case RNN_BIN_MIN: return (a != a || b != b) ? NAN : (a < b ? a : b);
    case RNN_BIN_PRELU: return a < 0.0f ? a * b : a;   /* b is the slope */
    default: return fmodf(a, b);              /* Mod with fmod=1: the dividend's sign */
    }
}

/* One innermost row; the common stride pairs get loops the compiler vectorises. */
#define RNN_BIN_ROW(EXPR)                                                                    \
    do {                                                                                     \
        if (sa == 1 && sb == 1) for (int64_t i = 0; i < n; i++) { float x = a[i], w = b[i]; y[i] = EXPR; } \
        else if (sa == 1 && sb == 0) { const float w = b[0]; for (int64_t i = 0; i < n; i++) { float x = a[i]; y[i] = EXPR; } } \
        else if (sa == 0 && sb == 1) { const float x = a[0]; for (int64_t i = 0; i < n; i++) { float w = b[i]; y[i] = EXPR; } } \
        else for (int64_t i = 0; i < n; i++) { float x = a[i * sa], w = b[i * sb]; y[i] = EXPR; } \
    } while (0)

static inline void rnn_bin_row(int op, const float *a, int64_t sa, const float *b, int64_t sb,
                               float *y, int64_t n) {
    switch (op) {
    case RNN_BIN_ADD: RNN_BIN_ROW(x + w); break;
    case RNN_BIN_SUB: RNN_BIN_ROW(x - w); break;
    case RNN_BIN_MUL: RNN_BIN_ROW(x * w); break;
    case RNN_BIN_DIV: RNN_BIN_ROW(x / w); break;
    case RNN_BIN_POW:
        if (sb == 0 && b[0] == 2.0f) { RNN_BIN_ROW(x * x); break; }   /* a power spectrum */
        for (int64_t i = 0; i < n; i++) y[i] = rnn_bin1(op, a[i * sa], b[i * sb]);
        break;
    default: for (int64_t i = 0; i < n; i++) y[i] = rnn_bin1(op, a[i * sa], b[i * sb]);
    }
}

static inline void rnn_exec_binary(int op, const float *a, const float *b, float *y,
                                   const rnn_bcast *g) {
    const int64_t nd = g->nd, n = g->shape[nd - 1];
    int64_t idx[RNN_EXEC_MAXD] = {0}, o[3] = {0, 0, 0}, oy = 0;
    do {
        rnn_bin_row(op, a + o[0], g->sa[nd - 1], b + o[1], g->sb[nd - 1], y + oy, n);
        oy += n;
    } while (rnn_bcast_next(g, idx, o));
}

/* Comparisons of float32 or int64 and logic of bools (one byte, 0 or 1), to bools, broadcast
 * as the binary operators are. */
enum {
    RNN_CMP_EQ = 0, RNN_CMP_LT, RNN_CMP_GT, RNN_CMP_LE, RNN_CMP_GE,              /* float32 */
    RNN_CMP_EQ_I64, RNN_CMP_LT_I64, RNN_CMP_GT_I64, RNN_CMP_LE_I64, RNN_CMP_GE_I64, /* int64 */
    RNN_CMP_AND, RNN_CMP_OR, RNN_CMP_XOR,                                         /* bool */
    RNN_CMP_COUNT
};

#define RNN_CMP_ROW(T, EXPR)                                                                 \
    do {                                                                                     \
        const T *pa = (const T *)a, *pb = (const T *)b;                                       \
        for (int64_t i = 0; i < n; i++) {                                                     \
            const T x = pa[i * sa], w = pb[i * sb];                                          \
            y[i] = (EXPR);                                                                   \
        }                                                                                    \
    } while (0)

static inline void rnn_cmp_row(int op, const void *a, int64_t sa, const void *b, int64_t sb,
                               uint8_t *y, int64_t n) {
    switch (op) {
    case RNN_CMP_EQ: RNN_CMP_ROW(float, x == w); break;
    case RNN_CMP_LT: RNN_CMP_ROW(float, x < w); break;
    case RNN_CMP_GT: RNN_CMP_ROW(float, x > w); break;
    case RNN_CMP_LE: RNN_CMP_ROW(float, x <= w); break;
    case RNN_CMP_GE: RNN_CMP_ROW(float, x >= w); break;
    case RNN_CMP_EQ_I64: RNN_CMP_ROW(int64_t, x == w); break;
    case RNN_CMP_LT_I64: RNN_CMP_ROW(int64_t, x < w); break;
    case RNN_CMP_GT_I64: RNN_CMP_ROW(int64_t, x > w); break;
    case RNN_CMP_LE_I64: RNN_CMP_ROW(int64_t, x <= w); break;
    case RNN_CMP_GE_I64: RNN_CMP_ROW(int64_t, x >= w); break;
    case RNN_CMP_AND: RNN_CMP_ROW(uint8_t, (x != 0) & (w != 0)); break;
    case RNN_CMP_OR: RNN_CMP_ROW(uint8_t, (x != 0) | (w != 0)); break;
    default: RNN_CMP_ROW(uint8_t, (x != 0) ^ (w != 0)); break;   /* Xor */
    }
}

static inline void rnn_exec_compare(int op, const char *a, const char *b, uint8_t *y,
                                    const rnn_bcast *g) {
    const int64_t nd = g->nd, n = g->shape[nd - 1];
    const int64_t es = op < RNN_CMP_EQ_I64 ? 4 : (op < RNN_CMP_AND ? 8 : 1);
    int64_t idx[RNN_EXEC_MAXD] = {0}, o[3] = {0, 0, 0}, oy = 0;
    do {
        rnn_cmp_row(op, a + o[0] * es, g->sa[nd - 1], b + o[1] * es, g->sb[nd - 1], y + oy, n);
        oy += n;
    } while (rnn_bcast_next(g, idx, o));
}

/* Where with a computed condition: y = c ? a : b on float32, c bools (one byte), broadcast. */
static inline void rnn_exec_where(const uint8_t *c, const float *a, const float *b, float *y,
                                  const rnn_bcast *g) {
    const int64_t nd = g->nd, n = g->shape[nd - 1];
    const int64_t sa = g->sa[nd - 1], sb = g->sb[nd - 1], sc = g->sc[nd - 1];
    int64_t idx[RNN_EXEC_MAXD] = {0}, o[3] = {0, 0, 0}, oy = 0;
    do {
        const float *pa = a + o[0], *pb = b + o[1];
        const uint8_t *pc = c + o[2];
        for (int64_t i = 0; i < n; i++) y[oy + i] = pc[i * sc] ? pa[i * sa] : pb[i * sb];
        oy += n;
    } while (rnn_bcast_next(g, idx, o));
}

/* Element-wise conversions between float32, int64 and bool, and Not. float32 to int64
 * truncates toward zero; NaN and values out of range give INT64_MIN (what the hardware's
 * conversion, and so NumPy's, gives on x86), never C's undefined behaviour. */
enum {
    RNN_CV_F32_I64 = 0, RNN_CV_I64_F32, RNN_CV_BOOL_F32, RNN_CV_F32_BOOL, RNN_CV_I64_BOOL,
    RNN_CV_BOOL_I64, RNN_CV_NOT, RNN_CV_COUNT
};

static inline void rnn_exec_convert(int op, const char *x, char *y, int64_t n) {
    const float *xf = (const float *)(const void *)x;
    const int64_t *xi = (const int64_t *)(const void *)x;
    const uint8_t *xb = (const uint8_t *)x;
    float *yf = (float *)(void *)y;
    int64_t *yi = (int64_t *)(void *)y;
    uint8_t *yb = (uint8_t *)y;
    switch (op) {
    case RNN_CV_F32_I64:
        for (int64_t i = 0; i < n; i++) {
            const float v = xf[i];
            yi[i] = (v > -9223372036854775808.0f && v < 9223372036854775808.0f) ? (int64_t)v
                                                                                 : INT64_MIN;
        }
        break;
    case RNN_CV_I64_F32: for (int64_t i = 0; i < n; i++) yf[i] = (float)xi[i]; break;
    case RNN_CV_BOOL_F32: for (int64_t i = 0; i < n; i++) yf[i] = xb[i] ? 1.0f : 0.0f; break;
    case RNN_CV_F32_BOOL: for (int64_t i = 0; i < n; i++) yb[i] = xf[i] != 0.0f; break;
    case RNN_CV_I64_BOOL: for (int64_t i = 0; i < n; i++) yb[i] = xi[i] != 0; break;
    case RNN_CV_BOOL_I64: for (int64_t i = 0; i < n; i++) yi[i] = xb[i] != 0; break;
    default: for (int64_t i = 0; i < n; i++) yb[i] = !xb[i]; break;   /* Not */
    }
}

/* Element-wise unary operators on float32 (alpha, beta: the operator's attributes). */
enum {
    RNN_UN_SIGMOID = 0, RNN_UN_TANH, RNN_UN_RELU, RNN_UN_SQRT, RNN_UN_EXP, RNN_UN_LOG,
    RNN_UN_NEG, RNN_UN_ABS, RNN_UN_RECIPROCAL, RNN_UN_LEAKYRELU, RNN_UN_HARDSIGMOID,
    RNN_UN_CLIP, RNN_UN_ERF, RNN_UN_SOFTPLUS, RNN_UN_ELU, RNN_UN_GELU, RNN_UN_GELU_TANH,
    RNN_UN_HARDSWISH, RNN_UN_SOFTSIGN, RNN_UN_SIGN, RNN_UN_FLOOR, RNN_UN_CEIL, RNN_UN_ROUND,
    RNN_UN_SIN, RNN_UN_COS, RNN_UN_TAN, RNN_UN_ATAN, RNN_UN_SELU, RNN_UN_CELU, RNN_UN_MISH,
    RNN_UN_THRESHOLDEDRELU, RNN_UN_COUNT
};

static inline void rnn_exec_unary(int op, const float *x, float *y, int64_t n, float alpha,
                                  float beta) {
    switch (op) {
    case RNN_UN_SIGMOID:
        for (int64_t i = 0; i < n; i++) {
            /* the stable form, as NumPy's reference computes it */
            const float v = x[i];
            y[i] = v >= 0.0f ? 1.0f / (1.0f + expf(-v)) : expf(v) / (1.0f + expf(v));
        }
        break;
    case RNN_UN_TANH: for (int64_t i = 0; i < n; i++) y[i] = tanhf(x[i]); break;
    case RNN_UN_RELU: for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : (x[i] != x[i] ? x[i] : 0.0f); break;
    case RNN_UN_SQRT: for (int64_t i = 0; i < n; i++) y[i] = sqrtf(x[i]); break;
    case RNN_UN_EXP: for (int64_t i = 0; i < n; i++) y[i] = expf(x[i]); break;
    case RNN_UN_LOG: for (int64_t i = 0; i < n; i++) y[i] = logf(x[i]); break;
    case RNN_UN_NEG: for (int64_t i = 0; i < n; i++) y[i] = -x[i]; break;
    case RNN_UN_ABS: for (int64_t i = 0; i < n; i++) y[i] = fabsf(x[i]); break;
    case RNN_UN_RECIPROCAL: for (int64_t i = 0; i < n; i++) y[i] = 1.0f / x[i]; break;
    case RNN_UN_LEAKYRELU: for (int64_t i = 0; i < n; i++) y[i] = x[i] < 0.0f ? alpha * x[i] : x[i]; break;
    case RNN_UN_HARDSIGMOID:
        for (int64_t i = 0; i < n; i++) {
            const float v = alpha * x[i] + beta;
            y[i] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
        }
        break;
    case RNN_UN_CLIP:
        for (int64_t i = 0; i < n; i++) {
            const float v = x[i];
            y[i] = v < alpha ? alpha : (v > beta ? beta : v);
        }
        break;
    case RNN_UN_ERF: for (int64_t i = 0; i < n; i++) y[i] = erff(x[i]); break;
    case RNN_UN_SOFTPLUS:
        for (int64_t i = 0; i < n; i++) {
            const float v = x[i];
            y[i] = v > 0.0f ? v + log1pf(expf(-v)) : log1pf(expf(v));
        }
        break;
    case RNN_UN_ELU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] < 0.0f ? alpha * (expf(x[i]) - 1.0f) : x[i];
        break;
    case RNN_UN_GELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        break;
    case RNN_UN_GELU_TANH:
        for (int64_t i = 0; i < n; i++) {
            const float v = x[i];
            y[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        }
        break;
    case RNN_UN_HARDSWISH:
        for (int64_t i = 0; i < n; i++) {
            const float v = x[i], h = v * (1.0f / 6.0f) + 0.5f;
            y[i] = v * (h < 0.0f ? 0.0f : (h > 1.0f ? 1.0f : h));
        }
        break;
    case RNN_UN_SOFTSIGN: for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + fabsf(x[i])); break;
    case RNN_UN_SIGN:   /* NaN stays NaN, as NumPy's and ONNX Runtime's sign leave it */
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? 1.0f : (x[i] < 0.0f ? -1.0f : x[i] * 0.0f);
        break;
    case RNN_UN_FLOOR: for (int64_t i = 0; i < n; i++) y[i] = floorf(x[i]); break;
    case RNN_UN_CEIL: for (int64_t i = 0; i < n; i++) y[i] = ceilf(x[i]); break;
    /* halves to even (the default rounding mode, which fpenv.h keeps) */
    case RNN_UN_ROUND: for (int64_t i = 0; i < n; i++) y[i] = nearbyintf(x[i]); break;
    case RNN_UN_SIN: for (int64_t i = 0; i < n; i++) y[i] = sinf(x[i]); break;
    case RNN_UN_COS: for (int64_t i = 0; i < n; i++) y[i] = cosf(x[i]); break;
    case RNN_UN_TAN: for (int64_t i = 0; i < n; i++) y[i] = tanf(x[i]); break;
    case RNN_UN_ATAN: for (int64_t i = 0; i < n; i++) y[i] = atanf(x[i]); break;
    case RNN_UN_SELU:   /* alpha, and beta the scale gamma */
        for (int64_t i = 0; i < n; i++)
            y[i] = beta * (x[i] > 0.0f ? x[i] : alpha * (expf(x[i]) - 1.0f));
        break;
    case RNN_UN_CELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : alpha * (expf(x[i] / alpha) - 1.0f);
        break;
    case RNN_UN_MISH:
        for (int64_t i = 0; i < n; i++) {
            const float v = x[i];
            y[i] = v * tanhf(v > 0.0f ? v + log1pf(expf(-v)) : log1pf(expf(v)));
        }
        break;
    default:   /* ThresholdedRelu */
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > alpha ? x[i] : 0.0f;
    }
}

/* Softmax (take_log 0) or LogSoftmax (take_log 1) along an axis of length n, x and y laid out
 * [outer, n, inner] (the axis need not be the last: its elements are inner apart). The
 * maximum is subtracted first, so exp cannot overflow; the sum of the exponentials is kept in
 * double. */
static inline void rnn_exec_softmax(int take_log, const float *x, float *y, int64_t outer,
                                    int64_t n, int64_t inner) {
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t j = 0; j < inner; j++) {
            const float *p = x + o * n * inner + j;
            float *q = y + o * n * inner + j;
            float m = -INFINITY;
            for (int64_t i = 0; i < n; i++) {
                const float v = p[i * inner];
                if (v > m || v != v) m = v;   /* a NaN makes the whole row NaN */
            }
            double sum = 0.0;
            if (take_log) {
                for (int64_t i = 0; i < n; i++) sum += (double)expf(p[i * inner] - m);
                const float ls = (float)log(sum);
                for (int64_t i = 0; i < n; i++) q[i * inner] = (p[i * inner] - m) - ls;
            } else {
                for (int64_t i = 0; i < n; i++) {
                    const float e = expf(p[i * inner] - m);
                    q[i * inner] = e;
                    sum += (double)e;
                }
                const float s = (float)sum;
                for (int64_t i = 0; i < n; i++) q[i * inner] /= s;
            }
        }
    }
}

/* Normalisation of rows: each of the rows of n contiguous elements gets (x - mean) /
 * sqrt(var + eps) (LayerNormalization past its axis, InstanceNormalization per channel of each
 * image), mean and variance in double. Then, when given, scale and bias: element i of row r
 * takes scale[(r % period) * s_row + i * s_col] (a LayerNormalization scale along the row, an
 * InstanceNormalization one per channel) and bias likewise with b_row, b_col. The rows' means
 * and 1 / sqrt(var + eps) go to mean and inv when given (LayerNormalization's other outputs). */
typedef struct {
    int64_t period, s_row, s_col, b_row, b_col;
} rnn_affine;

static inline void rnn_exec_norm(const float *x, float *y, int64_t rows, int64_t n, float eps,
                                 const float *scale, const float *bias, const rnn_affine *g,
                                 float *mean_out, float *inv_out) {
    if (n < 1) return;
    for (int64_t r = 0; r < rows; r++) {
        const float *p = x + r * n;
        float *q = y + r * n;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < n; i++) mean += p[i];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++) {
            const double d = p[i] - mean;
            var += d * d;
        }
        const double inv = 1.0 / sqrt(var / (double)n + (double)eps);
        if (mean_out) mean_out[r] = (float)mean;
        if (inv_out) inv_out[r] = (float)inv;
        const int64_t k = r % g->period;
        const float *s = scale ? scale + k * g->s_row : NULL;
        const float *b = bias ? bias + k * g->b_row : NULL;
        for (int64_t i = 0; i < n; i++) {
            float v = (float)((p[i] - mean) * inv);
            if (s) v *= s[i * g->s_col];
            if (b) v += b[i * g->b_col];
            q[i] = v;
        }
    }
}

/* Reductions over float32: for each of the n_out outputs (at offsets base[k] into x), the
 * elements at base[k] + the reduced dims' offsets (rshape, rstride); sums in double, as
 * exact as NumPy's pairwise sums for the sizes real models reduce. */
enum {
    RNN_RED_SUM = 0, RNN_RED_MEAN, RNN_RED_MAX, RNN_RED_MIN, RNN_RED_SUMSQ, RNN_RED_L2,
    RNN_RED_L1, RNN_RED_PROD, RNN_RED_LOGSUMEXP, RNN_RED_COUNT,
    RNN_RED_SUMEXP   /* a pass of LogSumExp: exp(v - shift) summed */
};

typedef struct {
    int64_t nd;
    int64_t shape[RNN_EXEC_MAXD], stride[RNN_EXEC_MAXD];
} rnn_rdims;

/* One output's reduction over the elements at p + the reduced dims' offsets. */
static inline double rnn_red_pass(int op, const float *p, const rnn_rdims *r, int64_t count,
                                  double shift) {
    double acc = (op == RNN_RED_MAX) ? -INFINITY
               : (op == RNN_RED_MIN ? INFINITY : (op == RNN_RED_PROD ? 1.0 : 0.0));
    int64_t idx[RNN_EXEC_MAXD] = {0};
    int64_t off = 0;
    for (int64_t e = 0; e < count; e++) {
        const double v = p[off];
        switch (op) {
        case RNN_RED_MAX: acc = (v != v || acc != acc) ? NAN : (v > acc ? v : acc); break;
        case RNN_RED_MIN: acc = (v != v || acc != acc) ? NAN : (v < acc ? v : acc); break;
        case RNN_RED_SUMSQ: case RNN_RED_L2: acc += v * v; break;
        case RNN_RED_L1: acc += fabs(v); break;
        case RNN_RED_PROD: acc *= v; break;
        case RNN_RED_SUMEXP: acc += exp(v - shift); break;
        default: acc += v;
        }
        for (int64_t d = r->nd - 1; d >= 0; d--) {
            idx[d]++;
            off += r->stride[d];
            if (idx[d] < r->shape[d]) break;
            off -= r->stride[d] * r->shape[d];
            idx[d] = 0;
        }
    }
    return acc;
}

static inline void rnn_exec_reduce(int op, const float *x, float *y, const int64_t *base,
                                   int64_t n_out, const rnn_rdims *r) {
    int64_t count = 1;
    for (int64_t d = 0; d < r->nd; d++) count *= r->shape[d];
    for (int64_t k = 0; k < n_out; k++) {
        const float *p = x + base[k];
        double acc;
        if (op == RNN_RED_LOGSUMEXP) {
            /* the maximum taken out first, so exp cannot overflow; an infinite or NaN maximum
             * is the result itself */
            const double m = rnn_red_pass(RNN_RED_MAX, p, r, count, 0.0);
            acc = isfinite(m) ? m + log(rnn_red_pass(RNN_RED_SUMEXP, p, r, count, m)) : m;
        } else {
            acc = rnn_red_pass(op, p, r, count, 0.0);
        }
        if (op == RNN_RED_MEAN) acc /= (double)count;
        if (op == RNN_RED_L2) acc = sqrt(acc);
        y[k] = (float)acc;
    }
}

/* y[M, N] = act(a[M, K] @ b[K, N] + rb) for each of n_mat (a, b, y) offset triples: a
 * batched MatMul or a convolution's columns, through dense.h's product in variant ``isa``
 * (its row tiles). rb (NULL: none) holds a bias per row of a: the triple whose a starts at
 * offset o takes rb[o / K ...], as a convolution's weights [G, Cog, K] and bias [G * Cog] do. */
static inline void rnn_exec_matmul(const float *a, const float *b, float *y, const int64_t *offs,
                                   int64_t n_mat, int64_t M, int64_t K, int64_t N,
                                   const float *rb, int act, int isa) {
    for (int64_t m = 0; m < n_mat; m++)
        rnn_dense_rows_bias(a + offs[3 * m], (size_t)M, (size_t)K, b + offs[3 * m + 1],
                            (size_t)N, (size_t)N, NULL, rb != NULL ? rb + offs[3 * m] / K : NULL,
                            y + offs[3 * m + 2], act, isa);
}

#endif
