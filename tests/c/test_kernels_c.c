/* The C kernels without Python: every ISA variant compiled into this build and supported by
 * this CPU (x86-64: serial, avx2, avx512 and amx where the CPU has them; AArch64: serial and
 * neon), every weight type, against a float64 reference written here and against the serial
 * variant. tools/test_aarch64.sh builds it natively and cross-compiled for AArch64 (run
 * under qemu).
 *
 * Checked per variant:
 *   gemm      each GEMM entry (gemm[wtype]) for G = 1..4 gates and row counts on both sides
 *             of every register-blocking limit, against the float64 product
 *   activate  the eleven activations against libm in double
 *   read_sum  the bench probe against a double sum
 *   cells     LSTM (peepholes, projection), GRU (both linear_before_reset), RNN, forward and
 *             reverse, through the driver: a whole sequence against the float64 recurrence;
 *             streamed steps, each row alone and the blocks split three ways (as the thread
 *             pool splits them) must give the sequence's bits exactly, the promise of
 *             kernels_impl.h; and every output within tolerance of the serial variant's.
 * The SIMD variants sum in their own order with FMAs, so they are not the serial variant's
 * bits (tests/core/test_bit_identical.py holds each variant to its own bits, as here); how many
 * cases happen to match serial bit for bit is printed for information. Except NEON's integer
 * int8 products (SDOT, or SMULL without dotprod), whose GEMM entries must give the serial
 * variant's bits exactly.
 *
 * Weights are packed here in the layout of cells.h (layers.py: pack_weights). fp16 and bf16
 * weights are drawn exactly representable, so the reference multiplies by the same values;
 * int8 weights are quantized here, and the reference uses scale * (q + q2 / 254).
 *
 * Prints one line per variant and ends with "<n> passed, <m> failed"; exits 1 on a failure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rnnengine/driver.h"

/* ---- checks ---- */

static int n_pass, n_fail, n_same_as_serial, n_compared_to_serial, n_promised_serial;

static void check(int ok, const char *isa, const char *what, const char *detail) {
    if (ok) {
        n_pass++;
    } else {
        n_fail++;
        printf("FAIL [%s] %s: %s\n", isa, what, detail);
    }
}

/* ---- deterministic random numbers ---- */

static unsigned long long rng_state = 0x9e3779b97f4a7c15ull;

static double rnd01(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static float rnd_sym(double a) { return (float)((2.0 * rnd01() - 1.0) * a); }

/* ---- weights: values, packing ---- */

static const char *const WT_NAMES[RNN_W_COUNT] = {"f32", "f16", "bf16", "i8", "i8r"};

/* A weight in about [-a, a], exactly representable in the type: fp16 k / 1024 (|k| < 1024,
 * 10 significant bits) and bf16 k / 128 (|k| < 128, 7 bits) times a power of two near a. */
static float rnd_weight(int wtype, double a) {
    const double p2 = exp2(round(log2(a)));
    if (wtype == RNN_W_F16) return (float)((double)((int)(rnd01() * 2047.0) - 1023) / 1024.0 * p2);
    if (wtype == RNN_W_BF16) return (float)((double)((int)(rnd01() * 255.0) - 127) / 128.0 * p2);
    return rnd_sym(a);
}

static uint16_t f32_to_f16_exact(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    const uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
    if ((b & 0x7fffffffu) == 0) return sign;
    const int e = (int)((b >> 23) & 0xff) - 127 + 15;
    if (e < 1 || e > 30 || (b & 0x1fffu)) {
        fprintf(stderr, "weight %g is not a normal half\n", (double)f);
        exit(2);
    }
    return (uint16_t)(sign | (e << 10) | ((b >> 13) & 0x3ffu));
}

static uint16_t f32_to_bf16_exact(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    if (b & 0xffffu) {
        fprintf(stderr, "weight %g is not a bfloat16\n", (double)f);
        exit(2);
    }
    return (uint16_t)(b >> 16);
}

static void *alloc64(size_t bytes) {
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memset(p, 0, (bytes + 63) / 64 * 64);
    return p;
}

/* Gate-major w [G*H][K] -> block panels of weight type wtype (cells.h). eff (same shape as w)
 * gets the weights the kernels multiply by: w itself, or for int8 scale * (q + q2 / 254). */
static void *pack(int wtype, const float *w, int G, int H, int K, double *eff) {
    const int HB = (H + RNN_BW - 1) / RNN_BW, ks = rnn_wtype_kstep(wtype);
    const int Kp = (K + ks - 1) / ks * ks;
    const size_t pb = rnn_panel_bytes(wtype, K, G);
    char *out = (char *)alloc64(pb * HB);
    for (size_t i = 0; i < (size_t)G * H * K; i++) eff[i] = w[i];
    for (int b = 0; b < HB; b++) {
        char *blk = out + pb * b;
        for (int g = 0; g < G; g++)
            for (int u = 0; u < RNN_BW; u++) {
                const int row = 16 * b + u;
                const float *wr = row < H ? w + ((size_t)g * H + row) * K : NULL;
                float scale = 0.0f, amax = 0.0f;
                if (wtype == RNN_W_I8 || wtype == RNN_W_I8R) {
                    for (int k = 0; wr && k < K; k++)
                        amax = fabsf(wr[k]) > amax ? fabsf(wr[k]) : amax;
                    scale = amax / 127.0f;
                    ((float *)(blk + (size_t)Kp * G * RNN_BW))[g * RNN_BW + u] = scale;
                }
                int32_t sum1 = 0, sum2 = 0;
                for (int k = 0; k < Kp; k++) {
                    const float v = wr && k < K ? wr[k] : 0.0f;
                    /* panel[k / ks][g][u][k % ks] */
                    const size_t at = (((size_t)(k / ks) * G + g) * RNN_BW + u) * ks + k % ks;
                    if (wtype == RNN_W_F32) ((float *)blk)[at] = v;
                    else if (wtype == RNN_W_F16) ((uint16_t *)blk)[at] = f32_to_f16_exact(v);
                    else if (wtype == RNN_W_BF16) ((uint16_t *)blk)[at] = f32_to_bf16_exact(v);
                    else {
                        const float t = scale > 0.0f ? v / scale : 0.0f;
                        float q = rintf(t);
                        q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
                        float q2 = 0.0f;
                        if (wtype == RNN_W_I8R) {
                            q2 = rintf((t - q) * RNN_I8_FINE);
                            q2 = q2 > 126.0f ? 126.0f : q2 < -126.0f ? -126.0f : q2;
                        }
                        ((int8_t *)blk)[at] = (int8_t)q;
                        sum1 += (int32_t)q;
                        sum2 += (int32_t)q2;
                        if (wtype == RNN_W_I8R)
                            ((int8_t *)rnn_i8r_quads(blk, K, G))[at] = (int8_t)q2;
                        if (wr && k < K)
                            eff[((size_t)g * H + row) * K + k] =
                                (double)scale * ((double)q + (double)q2 / RNN_I8_FINE);
                    }
                }
                if (wtype == RNN_W_I8 || wtype == RNN_W_I8R)
                    ((int32_t *)rnn_i8_sums(blk, K, G))[g * RNN_BW + u] = sum1;
                if (wtype == RNN_W_I8R)
                    ((int32_t *)rnn_i8r_sums(blk, K, G))[g * RNN_BW + u] = sum2;
            }
    }
    return out;
}

/* Gate-major v [G*H] -> [HB][G][16], zero padded. */
static float *blocked(const float *v, int G, int H) {
    const int HB = (H + RNN_BW - 1) / RNN_BW;
    float *out = (float *)alloc64(sizeof(float) * HB * G * RNN_BW);
    for (int g = 0; g < G; g++)
        for (int j = 0; j < H; j++)
            out[((size_t)(j / RNN_BW) * G + g) * RNN_BW + j % RNN_BW] = v[g * H + j];
    return out;
}

/* ---- the variants ---- */

typedef struct {
    int isa;
    const char *name;
    const rnn_kernels_t *k;
} variant_t;

/* Relative error of the inputs as a GEMM entry feeds them to its product: exact for fp32
 * arithmetic, rounded to bf16 by the dot-product and AMX entries, quantized in two int8
 * parts (gemm_entries.h) for int8 weights. */
static double input_rel(const rnn_kernels_t *k, int wtype) {
    const char *g = k->gemm_isa[wtype];
    if (wtype == RNN_W_I8 || wtype == RNN_W_I8R) return 1.0 / (127.0 * 254.0);
    if (wtype == RNN_W_BF16 && (!strcmp(g, "avx512bf16") || !strcmp(g, "amx"))) return 1.0 / 256.0;
    return 0.0;
}

/* The products promised to give the serial variant's bits: NEON's integer int8 products
 * (gemm_neon_i8.h: exact integer sums, dequantized in the serial variant's order). */
static int serial_bits_promised(const rnn_kernels_t *k, int wtype) {
    const char *g = k->gemm_isa[wtype];
    return (wtype == RNN_W_I8 || wtype == RNN_W_I8R) &&
           (!strcmp(g, "neondot") || !strcmp(g, "neonsmull"));
}

/* ---- gemm entries against the float64 product ---- */

/* acc rows += in rows @ a panel of G gates, K inputs, for ng rows (the entries chunk rows by
 * their register blocking, up to 4, 6 or 8 rows a pass and half that for int8's two input
 * parts, so 1..13 and 25 rows cross every limit twice over, and K = 1100 crosses the
 * chunks of K the reduced types' entries take, 512 k's), with padding in both
 * strides; the padding must stay untouched. Tolerance: fp32 rounding of the sum, 8 ulp of
 * its magnitude, plus the input's own rounding (input_rel) times sum |w| max |x|. */
static void test_gemm(const variant_t *v, const variant_t *serial) {
    static const int rows[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 25};
    static const int ks[] = {1, 6, 37, 130, 1100};
    for (int wt = 0; wt < RNN_W_COUNT; wt++)
        for (int G = 1; G <= 4; G++)
            for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
                for (size_t ri = 0; ri < sizeof rows / sizeof *rows; ri++) {
                    const int K = ks[ki], ng = rows[ri], units = G * RNN_BW;
                    const size_t ldin = (size_t)K + 3, ldacc = (size_t)units + 5;
                    const size_t nacc = (size_t)ng * ldacc;
                    float *w = (float *)malloc(sizeof(float) * units * K);
                    double *eff = (double *)malloc(sizeof(double) * units * K);
                    float *in = (float *)malloc(sizeof(float) * ng * ldin);
                    float *acc0 = (float *)malloc(sizeof(float) * nacc);
                    float *acc = (float *)malloc(sizeof(float) * nacc);
                    float *acc_s = (float *)malloc(sizeof(float) * nacc);
                    for (int i = 0; i < units * K; i++) w[i] = rnd_weight(wt, 0.5);
                    for (size_t i = 0; i < ng * ldin; i++) in[i] = rnd_sym(2.0);
                    for (size_t i = 0; i < nacc; i++) acc0[i] = rnd_sym(1.0);
                    memcpy(acc, acc0, sizeof(float) * nacc);
                    memcpy(acc_s, acc0, sizeof(float) * nacc);
                    void *panel = pack(wt, w, G, RNN_BW, K, eff);
                    const rnn_fpenv_t env = rnn_fpenv_enter();
                    v->k->gemm[wt](ng, G, K, panel, in, ldin, acc, ldacc, NULL);
                    serial->k->gemm[wt](ng, G, K, panel, in, ldin, acc_s, ldacc, NULL);
                    rnn_fpenv_leave(env);
                    const double rel = input_rel(v->k, wt), rel_s = input_rel(serial->k, wt);
                    double worst = 0.0, worst_s = 0.0;
                    int ok = 1, pad_ok = 1, same = 1;
                    for (int n = 0; n < ng; n++) {
                        double xmax = 0.0;
                        for (int k = 0; k < K; k++) xmax = fmax(xmax, fabs(in[n * ldin + k]));
                        for (size_t o = 0; o < ldacc; o++) {
                            const size_t i = n * ldacc + o;
                            if (o >= (size_t)units) {
                                pad_ok &= acc[i] == acc0[i];
                                continue;
                            }
                            double ref = acc0[i], mag = fabs(acc0[i]), wsum = 0.0;
                            for (int k = 0; k < K; k++) {
                                const double t = (double)in[n * ldin + k] * eff[o * K + k];
                                ref += t;
                                mag += fabs(t);
                                wsum += fabs(eff[o * K + k]);
                            }
                            const double tol = 8.0 * 1.2e-7 * mag + 1.5 * rel * wsum * xmax;
                            const double tol_s = tol + 1.5 * rel_s * wsum * xmax;
                            const double e = fabs(acc[i] - ref), es = fabs(acc[i] - acc_s[i]);
                            ok &= e <= tol && es <= tol_s;
                            same &= acc[i] == acc_s[i];
                            worst = fmax(worst, e / (tol > 0.0 ? tol : 1.0));
                            worst_s = fmax(worst_s, es / (tol_s > 0.0 ? tol_s : 1.0));
                        }
                    }
                    char what[96], detail[160];
                    snprintf(what, sizeof what, "gemm %s G=%d K=%d rows=%d", WT_NAMES[wt], G, K,
                             ng);
                    snprintf(detail, sizeof detail,
                             "worst error %.3g of tolerance vs float64, %.3g vs serial%s", worst,
                             worst_s, pad_ok ? "" : "; wrote into the padding");
                    check(ok && pad_ok, v->name, what, detail);
                    if (v != serial && serial_bits_promised(v->k, wt)) {
                        snprintf(detail, sizeof detail, "%s: not the serial variant's bits",
                                 v->k->gemm_isa[wt]);
                        check(same, v->name, what, detail);
                        n_promised_serial++;
                    }
                    if (v != serial) {
                        n_compared_to_serial++;
                        n_same_as_serial += same;
                    }
                    free(panel);
                    free(w);
                    free(eff);
                    free(in);
                    free(acc0);
                    free(acc);
                    free(acc_s);
                }
}

/* ---- activations ---- */

static double act_ref(const rnn_activation_t *a, double x) {
    switch (a->code) {
    case RNN_ACT_RELU: return x > 0.0 ? x : 0.0;
    case RNN_ACT_TANH: return tanh(x);
    case RNN_ACT_SIGMOID: return 1.0 / (1.0 + exp(-x));
    case RNN_ACT_AFFINE: return a->alpha * x + a->beta;
    case RNN_ACT_LEAKYRELU: return x < 0.0 ? a->alpha * x : x;
    case RNN_ACT_THRESHOLDEDRELU: return x > a->alpha ? x : 0.0;
    case RNN_ACT_SCALEDTANH: return a->alpha * tanh(a->beta * x);
    case RNN_ACT_HARDSIGMOID: return fmin(1.0, fmax(0.0, a->alpha * x + a->beta));
    case RNN_ACT_ELU: return x < 0.0 ? a->alpha * (exp(x) - 1.0) : x;
    case RNN_ACT_SOFTSIGN: return x / (1.0 + fabs(x));
    default: return x > 0.0 ? x + log1p(exp(-x)) : log1p(exp(x)); /* softplus */
    }
}

/* Each activation over 203 values in [-12, 12] (a tail shorter than a vector), against libm
 * in double: 1e-6 absolute plus 4 ulp relative (math_impl.h: exp ~2 ulp, tanh 4e-7, sigmoid
 * 3e-7), and against the serial variant within twice that; a NaN among them must come out
 * NaN exactly when the serial variant's does. */
static void test_activate(const variant_t *v, const variant_t *serial) {
    enum { n = 203 };
    for (int code = 0; code < RNN_ACT_COUNT; code++) {
        const rnn_activation_t a = {code, code == RNN_ACT_THRESHOLDEDRELU ? 0.7f : 0.3f, 0.6f};
        float x[n], y[n], ys[n];
        for (int i = 0; i < n; i++) x[i] = y[i] = ys[i] = (float)(-12.0 + 24.0 * i / (n - 1));
        x[7] = y[7] = ys[7] = NAN; /* NaN goes where the serial variant sends it */
        v->k->activate(a, y, n);
        serial->k->activate(a, ys, n);
        int ok = isnan(y[7]) == isnan(ys[7]);
        double worst = 0.0;
        for (int i = 0; i < n; i++) {
            if (i == 7) continue;
            const double r = act_ref(&a, x[i]), tol = 1e-6 + 4.8e-7 * fabs(r);
            worst = fmax(worst, fabs(y[i] - r) / tol);
            ok &= fabs(y[i] - r) <= tol && fabs(y[i] - ys[i]) <= 2 * tol;
        }
        char what[64], detail[96];
        snprintf(what, sizeof what, "activate code %d", code);
        snprintf(detail, sizeof detail, "worst error %.3g of tolerance", worst);
        check(ok, v->name, what, detail);
    }
    float p[256];
    double ref = 0.0;
    for (int i = 0; i < 256; i++) ref += p[i] = rnd_sym(1.0);
    check(fabs(v->k->read_sum(p, 256, 0) - ref) < 1e-4 &&
              fabs(v->k->read_sum(p, 256, 1) - ref) < 1e-4,
          v->name, "read_sum", "sum of 256 floats off by more than 1e-4");
}

/* ---- cells through the driver ---- */

typedef struct {
    const char *name;
    int kind, H, I, P, peep, lbr, reverse, T, N;
    float clip;
    int odd_acts; /* LSTM: hardsigmoid / scaledtanh / softsign instead of the defaults */
} cfg_t;

static const cfg_t CFGS[] = {
    {"lstm peep", RNN_KIND_LSTM, 40, 9, 0, 1, 0, 0, 5, 3, 0.0f, 0},
    {"lstm proj", RNN_KIND_LSTM, 33, 7, 19, 0, 0, 0, 4, 2, 0.0f, 0},
    {"lstm acts clip reverse", RNN_KIND_LSTM, 17, 6, 0, 1, 0, 1, 4, 3, 2.5f, 1},
    {"gru lbr0", RNN_KIND_GRU, 37, 11, 0, 0, 0, 0, 5, 3, 0.0f, 0},
    {"gru lbr1 reverse", RNN_KIND_GRU, 16, 5, 0, 0, 1, 1, 4, 5, 0.0f, 0},
    {"gru lbr1 17 rows", RNN_KIND_GRU, 24, 10, 0, 0, 1, 0, 3, 17, 0.0f, 0},
    {"rnn", RNN_KIND_RNN, 70, 9, 0, 0, 0, 0, 5, 4, 0.0f, 0},
    {"rnn H=1", RNN_KIND_RNN, 1, 1, 0, 0, 0, 0, 3, 1, 0.0f, 0},
    {"lstm wide input", RNN_KIND_LSTM, 20, 600, 0, 0, 0, 0, 2, 8, 0.0f, 0},
    {"rnn wide input", RNN_KIND_RNN, 20, 600, 0, 0, 0, 0, 2, 8, 0.0f, 0},
    /* recurrent fp16 products with K > 128 over more rows than one register block */
    {"rnn wide hidden", RNN_KIND_RNN, 200, 5, 0, 0, 0, 0, 2, 10, 0.0f, 0},
    {"gru wide hidden", RNN_KIND_GRU, 150, 5, 0, 0, 1, 0, 2, 10, 0.0f, 0},
};

typedef struct {
    cfg_t cf;
    int G, Ho;
    float *W, *R, *Wb, *Rb, *Pp, *proj;      /* ONNX layouts, gate-major */
    double *eW, *eR, *eproj;                 /* the weights the kernels multiply by */
    float *x, *h0, *c0;                      /* [T][N][I], [N][Ho], [N][H] */
    rnn_cell_t cell;
    void *bufs[8];
} layer_t;

static float *rnd_array(size_t n, double a) {
    float *p = (float *)malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) p[i] = rnd_sym(a);
    return p;
}

static float *rnd_weights(int wtype, size_t n, double a) {
    float *p = (float *)malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) p[i] = rnd_weight(wtype, a);
    return p;
}

static void layer_make(layer_t *L, const cfg_t *cf, int wtype) {
    memset(L, 0, sizeof *L);
    L->cf = *cf;
    const int H = cf->H, I = cf->I;
    const int G = cf->kind == RNN_KIND_LSTM ? 4 : cf->kind == RNN_KIND_GRU ? 3 : 1;
    const int Ho = cf->P ? cf->P : H;
    const double ws = cf->I > 100 ? 0.05 : 0.4;
    L->G = G;
    L->Ho = Ho;
    L->W = rnd_weights(wtype, (size_t)G * H * I, ws);
    L->R = rnd_weights(wtype, (size_t)G * H * Ho, 0.4);
    L->Wb = rnd_array((size_t)G * H, 0.3);
    L->Rb = rnd_array((size_t)G * H, 0.3);
    L->Pp = cf->peep ? rnd_array((size_t)3 * H, 0.3) : NULL;
    L->proj = cf->P ? rnd_weights(wtype, (size_t)cf->P * H, 0.4) : NULL;
    L->eW = (double *)malloc(sizeof(double) * G * H * I);
    L->eR = (double *)malloc(sizeof(double) * G * H * Ho);
    L->eproj = cf->P ? (double *)malloc(sizeof(double) * cf->P * H) : NULL;
    L->x = rnd_array((size_t)cf->T * cf->N * I, 1.0);
    L->h0 = rnd_array((size_t)cf->N * Ho, 0.5);
    L->c0 = rnd_array((size_t)cf->N * H, 0.5);

    rnn_cell_t *c = &L->cell;
    c->kind = cf->kind;
    c->gates = G;
    c->gates_h = cf->kind == RNN_KIND_GRU && !cf->lbr ? 2 : G;
    c->input_size = I;
    c->hidden_size = H;
    c->output_size = Ho;
    c->blocks = (H + RNN_BW - 1) / RNN_BW;
    c->proj_blocks = cf->P ? (cf->P + RNN_BW - 1) / RNN_BW : 0;
    c->reverse = cf->reverse;
    c->linear_before_reset = cf->lbr;
    c->clip = cf->clip;
    if (cf->kind == RNN_KIND_RNN) {
        c->act[0] = (rnn_activation_t){RNN_ACT_TANH, 0.0f, 0.0f};
    } else if (cf->odd_acts) {
        c->act[0] = (rnn_activation_t){RNN_ACT_HARDSIGMOID, 0.2f, 0.5f};
        c->act[1] = (rnn_activation_t){RNN_ACT_SCALEDTANH, 0.9f, 1.1f};
        c->act[2] = (rnn_activation_t){RNN_ACT_SOFTSIGN, 0.0f, 0.0f};
    } else {
        c->act[0] = (rnn_activation_t){RNN_ACT_SIGMOID, 0.0f, 0.0f};
        c->act[1] = c->act[2] = (rnn_activation_t){RNN_ACT_TANH, 0.0f, 0.0f};
    }
    c->wtype = wtype;
    L->bufs[0] = (void *)(c->px = pack(wtype, L->W, G, H, I, L->eW));
    if (cf->kind == RNN_KIND_GRU && !cf->lbr) {
        L->bufs[1] = (void *)(c->ph = pack(wtype, L->R, 2, H, Ho, L->eR));
        L->bufs[2] = (void *)(c->prh = pack(wtype, L->R + (size_t)2 * H * Ho, 1, H, Ho,
                                            L->eR + (size_t)2 * H * Ho));
    } else {
        L->bufs[1] = (void *)(c->ph = pack(wtype, L->R, G, H, Ho, L->eR));
    }
    if (cf->P) L->bufs[3] = (void *)(c->pproj = pack(wtype, L->proj, 1, cf->P, H, L->eproj));
    float *bias = (float *)malloc(sizeof(float) * G * H);
    for (int i = 0; i < G * H; i++)
        bias[i] = cf->kind == RNN_KIND_GRU && cf->lbr && i >= 2 * H ? L->Wb[i]
                                                                     : L->Wb[i] + L->Rb[i];
    L->bufs[4] = (void *)(c->bias = blocked(bias, G, H));
    free(bias);
    if (cf->kind == RNN_KIND_GRU && cf->lbr)
        L->bufs[5] = (void *)(c->rbh = blocked(L->Rb + 2 * H, 1, H));
    if (cf->peep) L->bufs[6] = (void *)(c->peep = blocked(L->Pp, 3, H));
}

static void layer_free(layer_t *L) {
    for (int i = 0; i < 8; i++) free(L->bufs[i]);
    free(L->W), free(L->R), free(L->Wb), free(L->Rb), free(L->Pp), free(L->proj);
    free(L->eW), free(L->eR), free(L->eproj), free(L->x), free(L->h0), free(L->c0);
}

/* The float64 recurrence (ONNX's equations, cells.h) over the whole sequence: y [T][N][Ho],
 * final h [N][Ho] and c [N][H]. */
static void reference(const layer_t *L, double *y, double *hf, double *cf_out) {
    const cfg_t *cf = &L->cf;
    const rnn_cell_t *c = &L->cell;
    const int H = cf->H, I = cf->I, Ho = L->Ho, G = L->G;
    double *pre = (double *)malloc(sizeof(double) * (G * H + 2 * H));
    double *hraw = pre + G * H, *rh = hraw + H;
    for (int n = 0; n < cf->N; n++) {
        double h[1024], cs[1024];
        for (int j = 0; j < Ho; j++) h[j] = L->h0[n * Ho + j];
        for (int j = 0; j < H; j++) cs[j] = L->c0[n * H + j];
        for (int s = 0; s < cf->T; s++) {
            const int t = cf->reverse ? cf->T - 1 - s : s;
            const float *x = L->x + ((size_t)t * cf->N + n) * I;
            for (int r = 0; r < G * H; r++) {
                double a = L->Wb[r];
                for (int k = 0; k < I; k++) a += L->eW[(size_t)r * I + k] * x[k];
                pre[r] = a;
            }
            double rec[4 * 1024];
            for (int r = 0; r < G * H; r++) {
                double a = L->Rb[r];
                for (int k = 0; k < Ho; k++) a += L->eR[(size_t)r * Ho + k] * h[k];
                rec[r] = a;
            }
#define CLIP(v) (c->clip > 0.0f ? fmin((double)c->clip, fmax(-(double)c->clip, (v))) : (v))
            if (cf->kind == RNN_KIND_LSTM) {
                for (int j = 0; j < H; j++) {
                    double gi = pre[j] + rec[j], go = pre[H + j] + rec[H + j];
                    double gf = pre[2 * H + j] + rec[2 * H + j];
                    const double gc = pre[3 * H + j] + rec[3 * H + j];
                    if (cf->peep) {
                        gi += L->Pp[j] * cs[j];
                        gf += L->Pp[2 * H + j] * cs[j];
                    }
                    const double i = act_ref(&c->act[0], CLIP(gi));
                    const double f = act_ref(&c->act[0], CLIP(gf));
                    const double g = act_ref(&c->act[1], CLIP(gc));
                    cs[j] = f * cs[j] + i * g;
                    if (cf->peep) go += L->Pp[H + j] * cs[j];
                    hraw[j] = act_ref(&c->act[0], CLIP(go)) * act_ref(&c->act[2], cs[j]);
                }
                if (cf->P) {
                    for (int p = 0; p < cf->P; p++) {
                        double a = 0.0;
                        for (int j = 0; j < H; j++) a += L->eproj[(size_t)p * H + j] * hraw[j];
                        h[p] = a;
                    }
                } else {
                    for (int j = 0; j < H; j++) h[j] = hraw[j];
                }
            } else if (cf->kind == RNN_KIND_GRU) {
                double z[1024];
                for (int j = 0; j < H; j++) {
                    z[j] = act_ref(&c->act[0], CLIP(pre[j] + rec[j]));
                    const double r = act_ref(&c->act[0], CLIP(pre[H + j] + rec[H + j]));
                    rh[j] = r * h[j];
                    /* lbr=1: r * (Rh h + Rbh); the Wbh part is in pre */
                    hraw[j] = cf->lbr ? pre[2 * H + j] + r * rec[2 * H + j] : 0.0;
                }
                for (int j = 0; j < H; j++) {
                    double a = hraw[j];
                    if (!cf->lbr) {
                        a = pre[2 * H + j] + L->Rb[2 * H + j];
                        for (int k = 0; k < H; k++)
                            a += L->eR[(size_t)(2 * H + j) * Ho + k] * rh[k];
                    }
                    const double nn = act_ref(&c->act[1], CLIP(a));
                    hraw[j] = (1.0 - z[j]) * nn + z[j] * h[j];
                }
                for (int j = 0; j < H; j++) h[j] = hraw[j];
            } else {
                for (int j = 0; j < H; j++) h[j] = act_ref(&c->act[0], CLIP(pre[j] + rec[j]));
            }
#undef CLIP
            for (int j = 0; j < Ho; j++) y[((size_t)t * cf->N + n) * Ho + j] = h[j];
        }
        for (int j = 0; j < Ho; j++) hf[n * Ho + j] = h[j];
        for (int j = 0; j < H; j++) cf_out[n * H + j] = cs[j];
    }
    free(pre);
}

/* What one run of a layer produced: y [T][N][Ho], final h, final c. */
typedef struct {
    float *y, *h, *c;
} result_t;

static result_t result_new(const layer_t *L) {
    const cfg_t *cf = &L->cf;
    result_t r = {(float *)calloc((size_t)cf->T * cf->N * L->Ho, sizeof(float)),
                  (float *)calloc((size_t)cf->N * L->Ho, sizeof(float)),
                  (float *)calloc((size_t)cf->N * cf->H, sizeof(float))};
    return r;
}

static void result_free(result_t *r) { free(r->y), free(r->h), free(r->c); }

/* The whole sequence (rnn_run_stack, one layer) for rows [n0, n0 + N) into r's rows. */
static void run_sequence(const rnn_kernels_t *k, const layer_t *L, int n0, int N, result_t *r) {
    const cfg_t *cf = &L->cf;
    const int T = cf->T, I = cf->I, Ho = L->Ho, H = cf->H, lstm = cf->kind == RNN_KIND_LSTM;
    const rnn_cell_t *cells[1] = {&L->cell};
    size_t seq, lo;
    const size_t wl = rnn_stack_workspace(cells, 1, 1, T, N, &seq, &lo);
    float *work = (float *)malloc(sizeof(float) * (wl + 1));
    float *x = (float *)malloc(sizeof(float) * ((size_t)T * N * I + 1));
    float *y = (float *)malloc(sizeof(float) * ((size_t)T * N * Ho + 1));
    for (int t = 0; t < T; t++)
        memcpy(x + (size_t)t * N * I, L->x + ((size_t)t * cf->N + n0) * I, sizeof(float) * N * I);
    memcpy(r->h + (size_t)n0 * Ho, L->h0 + (size_t)n0 * Ho, sizeof(float) * N * Ho);
    memcpy(r->c + (size_t)n0 * H, L->c0 + (size_t)n0 * H, sizeof(float) * N * H);
    rnn_stack_run_t s = {cells, 1, 1, T, N, x, (size_t)T * N * I, NULL,
                         r->h + (size_t)n0 * Ho, (size_t)N * Ho,
                         lstm ? r->c + (size_t)n0 * H : NULL, (size_t)N * H,
                         y, (size_t)T * N * Ho, work, wl};
    rnn_run_stack(k, NULL, &s, NULL);
    for (int t = 0; t < T; t++)
        memcpy(r->y + ((size_t)t * cf->N + n0) * Ho, y + (size_t)t * N * Ho,
               sizeof(float) * N * Ho);
    free(work), free(x), free(y);
}

/* Streamed steps over all rows, in the direction's order. parts 0: rnn_stack_step (the
 * stream's entry); parts > 1: each phase's blocks split into that many ranges, run one
 * after another (rnn_split: what the pool gives its threads). */
static void run_steps(const rnn_kernels_t *k, const layer_t *L, int parts, result_t *r) {
    const cfg_t *cf = &L->cf;
    const int N = cf->N, I = cf->I, Ho = L->Ho, H = cf->H, lstm = cf->kind == RNN_KIND_LSTM;
    const rnn_cell_t *c = &L->cell;
    const rnn_cell_t *cells[1] = {c};
    const size_t sl = rnn_stack_step_scratch(cells, 1, N);
    float *scratch = (float *)malloc(sizeof(float) * (sl + 1));
    float *ha = (float *)malloc(sizeof(float) * N * Ho);
    float *hb = (float *)malloc(sizeof(float) * N * Ho);
    memcpy(ha, L->h0, sizeof(float) * N * Ho);
    memcpy(r->c, L->c0, sizeof(float) * N * H);
    for (int s = 0; s < cf->T; s++) {
        const int t = cf->reverse ? cf->T - 1 - s : s;
        const float *x = L->x + (size_t)t * N * I;
        float *y = r->y + (size_t)t * N * Ho;
        if (!parts) {
            rnn_stack_step(k, NULL, cells, 1, N, s, x, (size_t)N * I, ha, hb, (size_t)N * Ho,
                           lstm ? r->c : NULL, (size_t)N * H, y, (size_t)N * Ho, scratch, sl);
        } else {
            rnn_step_io_t io;
            rnn_step_io_init(&io, c, N, scratch);
            io.backward = s & 1;
            io.x = x;
            io.ldx = I;
            io.h_prev = ha;
            io.h_next = hb;
            if (lstm) io.c = r->c;
            const rnn_fpenv_t env = rnn_fpenv_enter();
            for (int p = 0; p < rnn_cell_phases(c); p++)
                for (int w = 0; w < parts; w++) {
                    int b0, b1;
                    rnn_split(rnn_cell_phase_blocks(c, p), w, parts, &b0, &b1);
                    if (b0 < b1) k->phase(k, c, &io, p, b0, b1);
                }
            rnn_fpenv_leave(env);
            memcpy(y, hb, sizeof(float) * N * Ho);
        }
        float *tmp = ha;
        ha = hb;
        hb = tmp;
    }
    memcpy(r->h, ha, sizeof(float) * N * Ho);
    free(scratch), free(ha), free(hb);
}

static int same_bits(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static int results_same(const layer_t *L, const result_t *a, const result_t *b) {
    const cfg_t *cf = &L->cf;
    return same_bits(a->y, b->y, (size_t)cf->T * cf->N * L->Ho) &&
           same_bits(a->h, b->h, (size_t)cf->N * L->Ho) &&
           (cf->kind != RNN_KIND_LSTM || same_bits(a->c, b->c, (size_t)cf->N * cf->H));
}

/* Largest |a - b| over y, h and c. */
static double results_diff(const layer_t *L, const result_t *a, const double *y, const double *h,
                           const double *c) {
    const cfg_t *cf = &L->cf;
    double d = 0.0;
    for (size_t i = 0; i < (size_t)cf->T * cf->N * L->Ho; i++) d = fmax(d, fabs(a->y[i] - y[i]));
    for (size_t i = 0; i < (size_t)cf->N * L->Ho; i++) d = fmax(d, fabs(a->h[i] - h[i]));
    if (cf->kind == RNN_KIND_LSTM)
        for (size_t i = 0; i < (size_t)cf->N * cf->H; i++) d = fmax(d, fabs(a->c[i] - c[i]));
    return d != d ? INFINITY : d;
}

/* Tolerance of a layer's outputs against float64: 3e-5 for fp32 arithmetic on exact
 * weights (measured: up to 2e-6 over these few steps), plus what rounding the inputs adds
 * (input_rel) through sums of |w x| of a few units (measured: 5.5-6 times input_rel for the
 * int8 entries and for bf16 rounded inputs). */
static double cell_tol(const rnn_kernels_t *k, int wtype) {
    return 3e-5 + 15.0 * input_rel(k, wtype);
}

static void test_cells(const variant_t *v, const variant_t *serial, double *worst_err) {
    for (size_t ci = 0; ci < sizeof CFGS / sizeof *CFGS; ci++)
        for (int wt = 0; wt < RNN_W_COUNT; wt++) {
            layer_t L;
            layer_make(&L, &CFGS[ci], wt);
            const cfg_t *cf = &L.cf;
            const size_t ny = (size_t)cf->T * cf->N * L.Ho;
            double *ry = (double *)malloc(sizeof(double) * ny);
            double *rh = (double *)malloc(sizeof(double) * cf->N * L.Ho);
            double *rc = (double *)malloc(sizeof(double) * cf->N * cf->H);
            reference(&L, ry, rh, rc);
            result_t seq = result_new(&L), rows = result_new(&L), step = result_new(&L);
            result_t split = result_new(&L), ser = result_new(&L);
            run_sequence(v->k, &L, 0, cf->N, &seq);
            for (int n = 0; n < cf->N; n++) run_sequence(v->k, &L, n, 1, &rows);
            run_steps(v->k, &L, 0, &step);
            run_steps(v->k, &L, 3, &split);
            run_sequence(serial->k, &L, 0, cf->N, &ser);
            char what[96], detail[128];
            const double err = results_diff(&L, &seq, ry, rh, rc), tol = cell_tol(v->k, wt);
            const double tol_s = tol + cell_tol(serial->k, wt);
            double dser = 0.0;
            for (size_t i = 0; i < ny; i++) dser = fmax(dser, fabs(seq.y[i] - ser.y[i]));
            if (dser != dser) dser = INFINITY;
            worst_err[wt] = fmax(worst_err[wt], err);
#define CASE(label, ok, ...)                                                                    \
    do {                                                                                         \
        snprintf(what, sizeof what, "%s %s: %s", cf->name, WT_NAMES[wt], label);                 \
        snprintf(detail, sizeof detail, __VA_ARGS__);                                            \
        check(ok, v->name, what, detail);                                                        \
    } while (0)
            CASE("sequence vs float64", err <= tol, "max error %.3g > %.3g", err, tol);
            CASE("streamed steps = sequence", results_same(&L, &step, &seq), "bits differ");
            CASE("each row alone = batch", results_same(&L, &rows, &seq), "bits differ");
            CASE("blocks split 3 ways = steps", results_same(&L, &split, &step), "bits differ");
            CASE("vs serial", dser <= tol_s, "max difference %.3g > %.3g", dser, tol_s);
#undef CASE
            if (v != serial) {
                n_compared_to_serial++;
                n_same_as_serial += results_same(&L, &seq, &ser);
            }
            result_free(&seq), result_free(&rows), result_free(&step);
            result_free(&split), result_free(&ser);
            free(ry), free(rh), free(rc);
            layer_free(&L);
        }
}

int main(void) {
    variant_t vars[RNN_ISA_COUNT];
    int nv = 0;
    for (int isa = 0; isa < RNN_ISA_COUNT; isa++) {
        const rnn_kernels_t *k = rnn_cpu_supports(isa) ? rnn_kernels_for(isa) : NULL;
        if (k) vars[nv++] = (variant_t){isa, rnn_isa_names[isa], k};
    }
    for (int i = 0; i < nv; i++) {
        const int p0 = n_pass, f0 = n_fail;
        const int c0 = n_compared_to_serial, s0 = n_same_as_serial, b0 = n_promised_serial;
        double worst[RNN_W_COUNT] = {0};
        test_gemm(&vars[i], &vars[0]);
        test_activate(&vars[i], &vars[0]);
        test_cells(&vars[i], &vars[0], worst);
        printf("%-7s %4d passed, %d failed; cells' worst error vs float64:", vars[i].name,
               n_pass - p0, n_fail - f0);
        for (int wt = 0; wt < RNN_W_COUNT; wt++) printf(" %s %.2g", WT_NAMES[wt], worst[wt]);
        if (i) printf("; %d of %d cases the serial variant's bits", n_same_as_serial - s0,
                      n_compared_to_serial - c0);
        printf("; int8 product %s", vars[i].k->gemm_isa[RNN_W_I8]);
        if (n_promised_serial > b0)
            printf(" (%d gemm cases held to the serial variant's bits)", n_promised_serial - b0);
        printf("\n");
    }
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
