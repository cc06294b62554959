/* One ISA variant of the dense product (no include guard: dense.h includes this file once
 * per variant). Before including it, define:
 *   RNN_DN(name)    the variant's function name (name##_v4, name##_v3, name##_base)
 *   RNN_DN_TARGET   its target attribute (empty for the portable variant)
 *   RNN_DN_VT       the vector type of its four-row tile (dense.h: rnn_dense_v4 or _v8)
 *   RNN_DN_VT1      the vector type of its one-row tiles (the widest its registers hold)
 *   RNN_DN_ROW1_MAX the most RNN_DN_VT1 sums its registers hold in a one-row tile over
 *                   panels (16 or 8), or 0: a pass over y per k instead
 *   RNN_DN_WIDE     1 to add the six-row tile of 32 columns in zmm vectors (AVX-512 only:
 *                   it needs 32 vector registers)
 */

RNN_DN_TARGET
static void RNN_DN(rnn_dense_product)(const float *restrict x, size_t K, const float *restrict w,
                              size_t ldw, size_t N, float *restrict y)
{
    size_t k = 0;
    /* four rows of w per pass over y (a quarter of y's loads and stores), each product still
     * added in k order: the same sums as one k per pass */
    for (; k + 4 <= K; k += 4) {
        const float x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
        const float *restrict w0 = w + k * ldw;
        const float *restrict w1 = w0 + ldw;
        const float *restrict w2 = w1 + ldw;
        const float *restrict w3 = w2 + ldw;
        for (size_t n = 0; n < N; n++) {
            float t = y[n];
            t += x0 * w0[n];
            t += x1 * w1[n];
            t += x2 * w2[n];
            t += x3 * w3[n];
            y[n] = t;
        }
    }
    for (; k < K; k++) {
        const float xk = x[k];
        const float *restrict wk = w + k * ldw;
        for (size_t n = 0; n < N; n++) y[n] += xk * wk[n];
    }
}

RNN_DN_TARGET
static void RNN_DN(rnn_dense_activate)(float *restrict y, size_t N, int act)
{
    size_t n;
    switch (act) {
    case RNN_DENSE_RELU:
        for (n = 0; n < N; n++) y[n] = y[n] > 0.0f ? y[n] : (y[n] == y[n] ? 0.0f : y[n]);
        break;
    case RNN_DENSE_SIGMOID:
        for (n = 0; n < N; n++) y[n] = 1.0f / (1.0f + rnn_dense_exp(-y[n]));
        break;
    case RNN_DENSE_TANH:
        for (n = 0; n < N; n++) y[n] = tanhf(y[n]);
        break;
    case RNN_DENSE_SOFTMAX:
    case RNN_DENSE_LOGSOFTMAX: {
        float top = -INFINITY, sum = 0.0f;
        for (n = 0; n < N; n++) top = y[n] > top ? y[n] : top;
        if (act == RNN_DENSE_SOFTMAX) {
            for (n = 0; n < N; n++) { y[n] = rnn_dense_exp(y[n] - top); sum += y[n]; }
            for (n = 0; n < N; n++) y[n] /= sum;
        } else {
            /* the exps in a vectorised loop, then summed in order (the same bits) */
            float e[64];
            for (size_t n0 = 0; n0 < N; n0 += 64) {
                const size_t c = N - n0 < 64 ? N - n0 : 64;
                for (n = 0; n < c; n++) e[n] = rnn_dense_exp(y[n0 + n] - top);
                for (n = 0; n < c; n++) sum += e[n];
            }
            const float shift = top + logf(sum);
            for (n = 0; n < N; n++) y[n] -= shift;
        }
        break;
    }
    default:
        break;
    }
}

/* y = act(x @ w + b) for one row, w rows ldw apart: each column the k-ordered sum the row
 * tiles below make (b, then each product fused into it where the variant fuses), so one row
 * and a batch give the same bits. A pass over y per k reads every weight row whole, in
 * order (an earlier form summed four k's per pass, then stored y: a quarter of y's traffic,
 * but not the tiles' order). */
RNN_DN_TARGET
static void RNN_DN(rnn_dense_row)(const float *restrict x, size_t K, const float *restrict w,
                                  size_t ldw, size_t N, const float *restrict b, float fill,
                                  float *restrict y, int act)
{
    for (size_t n = 0; n < N; n++) y[n] = b != NULL ? b[n] : fill;
    RNN_DN(rnn_dense_product)(x, K, w, ldw, N, y);
    RNN_DN(rnn_dense_activate)(y, N, act);
}

#if defined(__GNUC__) || defined(__clang__)
/* Columns [n, n + T vectors) of one row over the whole of K, the T sums in registers: vector
 * t's weights for k at wt + (t / TPP) * gap + k * lds + (t % TPP) * width (TPP vectors in each
 * of T / TPP panels, gap floats apart; wt evaluated at the tile's first column n). Each weight
 * is loaded once and no partial sum is stored. Columns at or past N (a panel's zero padding)
 * are summed and dropped; sums start from b, or fill. */
#define RNN_DN_ROW1_TILE(VT, T, TPP, x, K, wt, lds, gap, N, b, fill, y, n, n_end)           \
    for (const size_t W_ = sizeof(VT) / sizeof(float); n + (T) * W_ <= (n_end);              \
         n += (T) * W_) {                                                                   \
        VT a_[T];                                                                           \
        {                                                                                   \
            float f_[(T) * sizeof(VT) / sizeof(float)];                                     \
            for (size_t j_ = 0; j_ < (T) * W_; j_++)                                        \
                f_[j_] = (b) != NULL && n + j_ < (N) ? (b)[n + j_] : (fill);                \
            _Pragma("GCC unroll 16") for (int t_ = 0; t_ < (T); t_++)                       \
                a_[t_] = RNN_DENSE_VLOAD(VT, f_ + t_ * W_);                                 \
        }                                                                                   \
        const float *restrict wn_ = (wt);                                                   \
        for (size_t k_ = 0; k_ < (K); k_++) {                                               \
            const float xk_ = (x)[k_];                                                      \
            _Pragma("GCC unroll 16") for (int t_ = 0; t_ < (T); t_++)                       \
                a_[t_] += xk_ * RNN_DENSE_VLOAD(VT, wn_ + (t_ / (TPP)) * (gap) + k_ * (lds)  \
                                                        + (t_ % (TPP)) * W_);               \
        }                                                                                   \
        {                                                                                   \
            float f_[(T) * sizeof(VT) / sizeof(float)];                                     \
            _Pragma("GCC unroll 16") for (int t_ = 0; t_ < (T); t_++)                       \
                RNN_DENSE_VSTORE(f_ + t_ * W_, a_[t_]);                                     \
            memcpy((y) + n, f_, ((N) - n < (T) * W_ ? (N) - n : (T) * W_) * sizeof(float)); \
        }                                                                                   \
    }
#endif

/* One row from weights packed in column panels (dense.h: rnn_dense_pack_panels): each panel
 * [K][pw] contiguous, so a row streams every weight in the order it is stored (row-major
 * tiles narrower than a row jump a row's length each k: a 256 x 512 product ran at 140 GB/s
 * from L2 that way, 210-235 GB/s from panels, on AVX-512 and AVX2 alike). With
 * RNN_DN_ROW1_MAX, register tiles: sixteen vectors over four panels where the registers hold
 * them, else a panel at a time, then the narrower last panel; without it, a pass over the
 * panel's columns of y per k. Either way the k-ordered fused sums of rnn_dense_row: the same
 * bits. */
RNN_DN_TARGET
static void RNN_DN(rnn_dense_panel_row)(const float *restrict x, size_t K,
                                        const float *restrict wp, size_t N,
                                        const float *restrict b, float fill, float *restrict y,
                                        int act)
{
    const size_t Np = rnn_dense_panel_cols(N), P = RNN_DENSE_PANEL;
#if (defined(__GNUC__) || defined(__clang__)) && RNN_DN_ROW1_MAX
#define RNN_DN_PV (RNN_DENSE_PANEL / (sizeof(RNN_DN_VT1) / sizeof(float)))  /* vectors a panel */
    const size_t full = Np / P * P, last = Np - full;    /* the whole panels; the last's width */
    size_t n = 0;
#if RNN_DN_ROW1_MAX >= 16    /* four panels of four vectors */
    RNN_DN_ROW1_TILE(RNN_DN_VT1, 4 * RNN_DN_PV, RNN_DN_PV, x, K, wp + K * n, P, P * K, N, b,
                     fill, y, n, full)
#endif
    RNN_DN_ROW1_TILE(RNN_DN_VT1, RNN_DN_PV, RNN_DN_PV, x, K, wp + K * n, P, 0, N, b, fill, y, n,
                     full)
    /* the last panel, [full, Np): last floats wide */
    RNN_DN_ROW1_TILE(RNN_DN_VT1, 4, 4, x, K, wp + K * full + (n - full), last, 0, N, b, fill,
                     y, n, Np)
    RNN_DN_ROW1_TILE(RNN_DN_VT1, 2, 2, x, K, wp + K * full + (n - full), last, 0, N, b, fill,
                     y, n, Np)
    RNN_DN_ROW1_TILE(RNN_DN_VT1, 1, 1, x, K, wp + K * full + (n - full), last, 0, N, b, fill,
                     y, n, Np)
#undef RNN_DN_PV
#else
    for (size_t p0 = 0; p0 < Np; p0 += P) {
        const size_t pw = Np - p0 < P ? Np - p0 : P;
        if (p0 < N) {
            const size_t cols = N - p0 < pw ? N - p0 : pw;
            for (size_t j = 0; j < cols; j++) y[p0 + j] = b != NULL ? b[p0 + j] : fill;
            RNN_DN(rnn_dense_product)(x, K, wp + K * p0, pw, cols, y + p0);
        }
    }
#endif
    RNN_DN(rnn_dense_activate)(y, N, act);
}

#if defined(__GNUC__) || defined(__clang__)
/* One row tile, written once for every shape: ROWS rows (y[r] (+)= x[r] @ w) over columns
 * [n, n_end) in steps of two vectors of type VT, the 2 * ROWS sums held in registers through
 * the whole of K, so each weight vector loaded feeds ROWS rows (a convolution's window rows,
 * a pool's batch: M = 48, K = 256, N = 258 took 165 us one row at a time). Sums in k order,
 * each product fused into its sum where the variant fuses, as in rnn_dense_product.
 * Leaves n at the first column it did not do. */
#define RNN_DN_TILES(VT, ROWS, x, K, w, ldw, N, y, n, n_end)                                   \
    for (const size_t W_ = sizeof(VT) / sizeof(float); n + 2 * W_ <= (n_end); n += 2 * W_) { \
        VT a_[ROWS], b_[ROWS];                                                              \
        for (int r_ = 0; r_ < (ROWS); r_++) {                                               \
            a_[r_] = RNN_DENSE_VLOAD(VT, (y) + r_ * (N) + n);                               \
            b_[r_] = RNN_DENSE_VLOAD(VT, (y) + r_ * (N) + n + W_);                          \
        }                                                                                   \
        for (size_t k_ = 0; k_ < (K); k_++) {                                               \
            const VT wa_ = RNN_DENSE_VLOAD(VT, (w) + k_ * (ldw) + n);                       \
            const VT wb_ = RNN_DENSE_VLOAD(VT, (w) + k_ * (ldw) + n + W_);                  \
            for (int r_ = 0; r_ < (ROWS); r_++) {                                           \
                a_[r_] += (x)[r_ * (K) + k_] * wa_;                                         \
                b_[r_] += (x)[r_ * (K) + k_] * wb_;                                         \
            }                                                                               \
        }                                                                                   \
        for (int r_ = 0; r_ < (ROWS); r_++) {                                               \
            RNN_DENSE_VSTORE((y) + r_ * (N) + n, a_[r_]);                                   \
            RNN_DENSE_VSTORE((y) + r_ * (N) + n + W_, b_[r_]);                              \
        }                                                                                   \
    }

/* Four rows at a time over every column: the tiles, then the last columns along each
 * weight row (contiguous), not down it. */
RNN_DN_TARGET
static void RNN_DN(rnn_dense_rows4)(const float *restrict x, size_t K, const float *restrict w,
                                    size_t ldw, size_t N, float *restrict y)
{
    size_t n = 0;
    RNN_DN_TILES(RNN_DN_VT, 4, x, K, w, ldw, N, y, n, N)
    if (n < N)
        for (size_t k = 0; k < K; k++) {
            const float *wk = w + k * ldw;
            for (size_t j = n; j < N; j++) {
                y[j] += x[k] * wk[j];
                y[N + j] += x[K + k] * wk[j];
                y[2 * N + j] += x[2 * K + k] * wk[j];
                y[3 * N + j] += x[3 * K + k] * wk[j];
            }
        }
}
#endif

#if RNN_DN_WIDE
/* Six rows over 32 columns in twelve 16-float (zmm) vectors, up to n_end, for AVX-512 (32
 * vector registers: a wider tile than AVX2's 16 hold). */
RNN_DN_TARGET
static void RNN_DN(rnn_dense_rows6)(const float *restrict x, size_t K, const float *restrict w,
                                    size_t ldw, size_t N, float *restrict y, size_t n_end)
{
    size_t n = 0;
    RNN_DN_TILES(rnn_dense_v16, 6, x, K, w, ldw, N, y, n, n_end)
}
#endif

#if defined(__GNUC__) || defined(__clang__)
/* Rows of the same product on w padded with columns to Np, a multiple of 32 (so the tiles
 * below cover every column), each group of rows summed into the scratch yp [6][Np] and its
 * first N columns copied out: a head of 30 classes over 100 frames took 32 us with 14 of its
 * columns summed one at a time, since the tiles are 16 or 32 wide. w is read as it is when its
 * rows are already that long (ldw >= Np: a constant padded once, rnn_dense_ldw), else from a
 * zero-padded copy made here. Each column is the same k-ordered fused sum as in the tiles, so
 * the padding changes no bits. Returns the rows done (a multiple of 4; 0 if the scratch could
 * not be allocated). */
RNN_DN_TARGET
static size_t RNN_DN(rnn_dense_padded)(const float *x, size_t M, size_t K, const float *w,
                                       size_t ldw, size_t N, const float *b, const float *rb,
                                       float *y, int act)
{
    const size_t Np = (N + 31) & ~(size_t)31;
    const int copy = ldw < Np;
    size_t m = 0;
    if (K > ((size_t)1 << 40) / Np)
        return 0;
    float *wp = (float *)malloc(((copy ? K * Np : 0) + 6 * Np) * sizeof(float));
    if (wp == NULL)
        return 0;
    float *yp = wp + (copy ? K * Np : 0);
    const float *wr = copy ? wp : w;
    const size_t ldr = copy ? Np : ldw;
    for (size_t k = 0; copy && k < K; k++) {
        memcpy(wp + k * Np, w + k * ldw, N * sizeof(float));
        memset(wp + k * Np + N, 0, (Np - N) * sizeof(float));
    }
    for (;;) {
        size_t rows = M - m >= (RNN_DN_WIDE ? 6 : 4) ? (RNN_DN_WIDE ? 6 : 4)
                      : M - m >= 4 ? 4 : 0;
        if (!rows)
            break;
        for (size_t r = 0; r < rows; r++)
            for (size_t n = 0; n < Np; n++)
                yp[r * Np + n] = b != NULL ? (n < N ? b[n] : 0.0f) : RNN_DENSE_FILL(rb, m + r);
#if RNN_DN_WIDE
        if (rows == 6)
            RNN_DN(rnn_dense_rows6)(x + m * K, K, wr, ldr, Np, yp, Np);
        else
#endif
            RNN_DN(rnn_dense_rows4)(x + m * K, K, wr, ldr, Np, yp);
        for (size_t r = 0; r < rows; r++) {
            memcpy(y + (m + r) * N, yp + r * Np, N * sizeof(float));
            RNN_DN(rnn_dense_activate)(y + (m + r) * N, N, act);
        }
        m += rows;
    }
    free(wp);
    return m;
}
#endif

/* y[M, N] = act(x[M, K] @ w + b), or with a bias per row instead (rb [M] or NULL; b NULL
 * then: a convolution's channels are the rows of its product, so their bias starts each
 * row's sums and act (ReLU) is applied while the row is in cache). Six rows at a time over
 * whole 32-column tiles where the variant has them, then four, then one; four rows or more
 * with 4 or more columns past the tiles run on padded weights instead. */
RNN_DN_TARGET
static void RNN_DN(rnn_dense_run)(const float *x, size_t M, size_t K, const float *w, size_t ldw,
                                  size_t N, const float *b, const float *rb, float *y, int act)
{
    size_t m = 0;
#if defined(__GNUC__) || defined(__clang__)
    if (M >= 4 && N % 32 >= 4)
        m = RNN_DN(rnn_dense_padded)(x, M, K, w, ldw, N, b, rb, y, act);
#endif
#if RNN_DN_WIDE
    const size_t wide = N & ~(size_t)31;
    if (M - m >= 6 && wide) {
        for (; m + 6 <= M; m += 6) {
            float *ym = y + m * N;
            for (size_t r = 0; r < 6; r++)
                for (size_t n = 0; n < N; n++)
                    ym[r * N + n] = b != NULL ? b[n] : RNN_DENSE_FILL(rb, m + r);
            RNN_DN(rnn_dense_rows6)(x + m * K, K, w, ldw, N, ym, wide);
            for (size_t r = 0; r < 6; r++) {      /* the columns past the tiles, a row each */
                const float *xr = x + (m + r) * K;
                for (size_t k = 0; k < K; k++)
                    for (size_t n = wide; n < N; n++) ym[r * N + n] += xr[k] * w[k * ldw + n];
                RNN_DN(rnn_dense_activate)(ym + r * N, N, act);
            }
        }
    }
#endif
#if defined(__GNUC__) || defined(__clang__)
    for (; m + 4 <= M; m += 4) {
        float *ym = y + m * N;
        for (size_t r = 0; r < 4; r++)
            for (size_t n = 0; n < N; n++)
                ym[r * N + n] = b != NULL ? b[n] : RNN_DENSE_FILL(rb, m + r);
        RNN_DN(rnn_dense_rows4)(x + m * K, K, w, ldw, N, ym);
        for (size_t r = 0; r < 4; r++) RNN_DN(rnn_dense_activate)(ym + r * N, N, act);
    }
#endif
    for (; m < M; m++)
        RNN_DN(rnn_dense_row)(x + m * K, K, w, ldw, N, b, RNN_DENSE_FILL(rb, m), y + m * N, act);
}
