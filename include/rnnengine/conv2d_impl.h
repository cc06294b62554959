/* One ISA variant of the 2-D convolution kernel (no include guard: conv2d.h includes this
 * file once per variant after defining RNN_C2_VL (floats per vector), RNN_C2_ACC (vector
 * accumulators a tile may keep in registers), RNN_C2_NAME(x) (a name with the variant's
 * suffix) and RNN_C2_TARGET (its target attribute, or nothing)).
 *
 * A tile is mr output channels (1, 2, 4 or 8: the packed block) times nv vectors of output
 * columns of one output row; mr and nv are constants at every call site, so the loops over
 * them unroll and the mr * nv accumulators stay in registers. Per (c, kh, kw) it loads nv
 * vectors of the scratch image and broadcasts mr packed weights.
 */

#if RNN_CONV_VECTORS
typedef float RNN_C2_NAME(rnn_c2_vec) __attribute__((vector_size(4 * RNN_C2_VL)));
typedef int RNN_C2_NAME(rnn_c2_ivec) __attribute__((vector_size(4 * RNN_C2_VL)));
#define RNN_C2_VEC RNN_C2_NAME(rnn_c2_vec)
#define RNN_C2_IVEC RNN_C2_NAME(rnn_c2_ivec)

RNN_C2_TARGET static inline __attribute__((always_inline)) void RNN_C2_NAME(rnn_c2_tile)(
    const float *restrict rows, size_t Cg, size_t KH, size_t KW, size_t c_step,
    size_t kh_step, const size_t *restrict off, const float *restrict w,
    const float *restrict b, int relu, float *restrict y, size_t plane, size_t mvalid,
    size_t owvalid, const int mr, const int nv) {
    RNN_C2_VEC acc[RNN_C2_MR_MAX][RNN_C2_NV_MAX];
    const RNN_C2_VEC zero = {0};
    for (int m = 0; m < mr; m++)
        for (int v = 0; v < nv; v++) acc[m][v] = zero + b[m];
    for (size_t c = 0; c < Cg; c++)
        for (size_t kh = 0; kh < KH; kh++) {
            const float *r = rows + c * c_step + kh * kh_step;
            for (size_t kw = 0; kw < KW; kw++) {
                const float *p = r + off[kw];
                RNN_C2_VEC xv[RNN_C2_NV_MAX];
                for (int v = 0; v < nv; v++) memcpy(&xv[v], p + v * RNN_C2_VL, sizeof xv[v]);
                for (int m = 0; m < mr; m++) {
                    const float s = w[m];   /* broadcast */
                    for (int v = 0; v < nv; v++) acc[m][v] += xv[v] * s;
                }
                w += mr;
            }
        }
    for (int m = 0; m < mr; m++) {
        if ((size_t)m >= mvalid) break;
        for (int v = 0; v < nv; v++) {
            const size_t at = (size_t)v * RNN_C2_VL;
            if (at >= owvalid) break;
            RNN_C2_VEC a = acc[m][v];
            if (relu) {   /* NaN kept, as Relu keeps it */
                const RNN_C2_IVEC keep = (a > zero) | (a != a);
                a = (RNN_C2_VEC)((RNN_C2_IVEC)a & keep);
            }
            if (owvalid - at >= RNN_C2_VL)   /* a constant size: one vector store */
                memcpy(y + (size_t)m * plane + at, &a, sizeof a);
            else
                memcpy(y + (size_t)m * plane + at, &a, (owvalid - at) * sizeof(float));
        }
    }
}
#undef RNN_C2_VEC
#undef RNN_C2_IVEC
#else
static void RNN_C2_NAME(rnn_c2_tile)(const float *rows, size_t Cg, size_t KH, size_t KW,
                                     size_t c_step, size_t kh_step, const size_t *off,
                                     const float *w, const float *b, int relu, float *y,
                                     size_t plane, size_t mvalid, size_t owvalid, const int mr,
                                     const int nv) {
    float acc[RNN_C2_MR_MAX][RNN_C2_NV_MAX * RNN_C2_VL];
    const int cols = nv * RNN_C2_VL;
    for (int m = 0; m < mr; m++)
        for (int i = 0; i < cols; i++) acc[m][i] = b[m];
    for (size_t c = 0; c < Cg; c++)
        for (size_t kh = 0; kh < KH; kh++)
            for (size_t kw = 0; kw < KW; kw++) {
                const float *p = rows + c * c_step + kh * kh_step + off[kw];
                for (int m = 0; m < mr; m++)
                    for (int i = 0; i < cols; i++) acc[m][i] += p[i] * w[m];
                w += mr;
            }
    for (size_t m = 0; m < mvalid; m++)
        for (size_t i = 0; i < owvalid; i++) {
            const float a = acc[m][i];
            y[m * plane + i] = relu && !(a > 0.0f) && a == a ? 0.0f : a;
        }
}
#endif

/* Output rows [oh0, oh1) of one sample (yn: its (M, Ho, Wo)) from its scratch image s,
 * block by block of packed channels (one block's weights stay in L1 across the rows). */
RNN_C2_TARGET
static void RNN_C2_NAME(rnn_c2_rows)(const rnn_conv2d_t *cv, const float *s, const size_t *off,
                                     const float *wp, const float *bp, float *yn, size_t oh0,
                                     size_t oh1) {
    const size_t Cg = cv->C / cv->G, Cog = cv->M / cv->G, KH = cv->KH, KW = cv->KW;
    const size_t mr = rnn_conv2d_mr(Cog), blocks = rnn_conv2d_blocks(Cog);
    const size_t Hp = rnn_conv2d_hp(cv), Wq = rnn_conv2d_wq(cv), sw = cv->sw;
    const size_t CK = Cg * KH * KW, row = sw * Wq, c_step = Hp * row, kh_step = cv->dh * row;
    const size_t plane = cv->Ho * cv->Wo;
    const size_t nvmax = RNN_C2_ACC / mr < RNN_C2_NV_MAX ? RNN_C2_ACC / mr : RNN_C2_NV_MAX;
    const size_t tile = nvmax * RNN_C2_VL;
    const int relu = cv->relu;
    for (size_t g = 0; g < cv->G; g++)
        for (size_t j = 0; j < blocks; j++) {
            const float *w = wp + (g * blocks + j) * CK * mr, *b = bp + (g * blocks + j) * mr;
            const size_t m0 = j * mr, mvalid = Cog - m0 < mr ? Cog - m0 : mr;
            float *ym = yn + (g * Cog + m0) * plane;
            const float *sg = s + g * Cg * c_step;
            for (size_t oh = oh0; oh < oh1; oh++) {
                const float *rows = sg + oh * cv->sh * row;
                float *yr = ym + oh * cv->Wo;
                for (size_t ow0 = 0; ow0 < cv->Wo; ow0 += tile) {
                    const size_t rem = cv->Wo - ow0;
                    const size_t nv = rem >= tile ? nvmax : (rem + RNN_C2_VL - 1) / RNN_C2_VL;
                    const size_t ov = rem < tile ? rem : tile;
                    const float *r = rows + ow0;
                    float *yo = yr + ow0;
#define RNN_C2_CASE(MR, NV)                                                                  \
    case MR * 8 + NV:                                                                        \
        RNN_C2_NAME(rnn_c2_tile)(r, Cg, KH, KW, c_step, kh_step, off, w, b, relu, yo, plane, \
                                 mvalid, ov, MR, NV);                                        \
        break;
                    switch (mr * 8 + nv) {
                    RNN_C2_CASE(1, 1) RNN_C2_CASE(1, 2) RNN_C2_CASE(1, 3) RNN_C2_CASE(1, 4)
                    RNN_C2_CASE(2, 1) RNN_C2_CASE(2, 2) RNN_C2_CASE(2, 3) RNN_C2_CASE(2, 4)
                    RNN_C2_CASE(4, 1) RNN_C2_CASE(4, 2)
#if RNN_C2_ACC >= 16
                    RNN_C2_CASE(4, 3) RNN_C2_CASE(4, 4) RNN_C2_CASE(8, 2)
#endif
                    default: RNN_C2_CASE(8, 1)
                    }
#undef RNN_C2_CASE
                }
            }
        }
}
