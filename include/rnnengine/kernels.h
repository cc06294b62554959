/* Every ISA variant of the kernels in one translation unit, and the table that picks one.
 *
 * The kernels are written once over a small vector vocabulary (vec_<isa>.h: rnn_v_* ops,
 * including one load-and-convert op per weight type); variant.h compiles them once per
 * variant: portable C (always), on x86-64 AVX2+FMA+F16C and AVX-512 through target
 * pragmas, so setuptools needs no per-file flags and no -march, and on AArch64 NEON (its
 * baseline: no pragma). Each variant is a table of
 * function pointers in two parts: the gate math (phase, xproj: kernels_impl.h) and one GEMM
 * entry per weight type (gemm_entries.h over gemm_impl.h), so a new product (another weight
 * type, another instruction such as gemm_dot.h's) plugs in as a table entry without copying
 * the gate math (gemm_madd.h: int8's integer product without VNNI, at both widths;
 * gemm_neon_i8.h: NEON's, SDOT or SMULL, for the neon table). Names are
 * rnn_<op>_<wtype>_<isa> for products, rnn_<op>_<isa> otherwise.
 * The driver calls through the table chosen at import (rnnengine.core.kernels: CPUID, or
 * RNNENGINE_ISA=serial|avx2|avx512|amx|neon). Every variant reads the same packed weights, so
 * switching variants needs no repacking.
 */
#ifndef RNNENGINE_KERNELS_H
#define RNNENGINE_KERNELS_H

#include <stddef.h>
#include <string.h>
#include <stdint.h>
#include "rnnengine/assert.h"
#include "rnnengine/cpu.h"
#include "rnnengine/activations.h"
#include "rnnengine/cells.h"
#if RNN_X86
#include <immintrin.h>
#endif

/* What a product that converts its input rows (to bf16 for AMX) has converted during one
 * phase: the phase owns it (fresh per phase, while its inputs cannot change) and passes one
 * per input to every block's product, so the rows are converted once, not once per block.
 * NULL: convert per call. */
typedef struct {
    const float *src; /* rows converted so far (NULL: none) */
    size_t ld;
    int rows, K;
    int slot;         /* which of the product's per-thread buffers holds them */
    int *tiles;       /* shared by the phase's memos: rows the thread's AMX tiles are set up
                       * for (0: none), kept between blocks; the phase releases them at its
                       * end (rnn_kernels_t.release) */
} rnn_gemm_memo_t;

/* acc rows (stride ldacc) += in rows (stride ldin) @ the block panel w of K inputs and G
 * gates, for ng rows: the product of one weight type (gemm_entries.h). */
typedef void (*rnn_gemm_fn)(int ng, int G, int K, const void *w, const float *in, size_t ldin,
                            float *acc, size_t ldacc, rnn_gemm_memo_t *memo);

/* acc rows (stride ldacc) = bias (one row of G * 16, the same for every row) + in1 rows @ w1
 * (K1 inputs) + in2 rows @ w2 (K2 inputs), both panels of G gates, summed in that order (the
 * order of a copy of the bias and two rnn_gemm_fn calls, so the results are the same bits);
 * memo[0] and memo[1] for in1 and in2. Returns 0, having done nothing, for shapes it does not
 * take; the caller then makes the two calls. */
typedef int (*rnn_gemm2_fn)(int ng, int G, const float *bias, int K1, const void *w1,
                            const float *in1, size_t ld1, int K2, const void *w2,
                            const float *in2, size_t ld2, float *acc, size_t ldacc,
                            rnn_gemm_memo_t *memo);

typedef struct rnn_kernels rnn_kernels_t;
struct rnn_kernels {
    /* Gate math: one phase of one timestep for blocks [b0, b1) (cells.h: rnn_cell_phases),
     * its products through gemm[c->wtype] of the table k it was called with. */
    void (*phase)(const rnn_kernels_t *k, const rnn_cell_t *c, const rnn_step_io_t *io,
                  int phase, int b0, int b1);
    /* Input projections + bias of M rows for blocks [b0, b1): out [HB][M][G][16]. */
    void (*xproj)(const rnn_kernels_t *k, const rnn_cell_t *c, int M, const float *x,
                  size_t ldx, float *out, int b0, int b1);
    /* One activation over x[0:n], in place. */
    void (*activate)(rnn_activation_t a, float *x, size_t n);
    /* Roofline probes (bench/): sum of a buffer; iters rounds of 12 vector FMAs. */
    float (*read_sum)(const float *p, size_t n, int backward);
    float (*fma_loop)(long iters);
    int vector_width; /* floats per vector */
    /* The products, one per weight type (enum rnn_wtype), and the instruction set each uses. */
    rnn_gemm_fn gemm[RNN_W_COUNT];
    const char *gemm_isa[RNN_W_COUNT];
    /* Ends what a phase's products kept between blocks (AMX tile configuration); NULL. */
    void (*release)(void);
    /* Input elements a product's memo buffer holds (0: it does not convert its inputs). */
    size_t gemm_memo[RNN_W_COUNT];
    /* Both products of a fused timestep block in one call (NULL: two rnn_gemm_fn calls): the
     * AMX product keeps the accumulators in tiles between them and loads the bias straight
     * into the tiles. */
    rnn_gemm2_fn gemm2[RNN_W_COUNT];
};

#if defined(__GNUC__) || defined(__clang__)
#define RNN_INLINE static inline __attribute__((always_inline))
#else
#define RNN_INLINE static __forceinline
#endif
#define RNN_STR_(x) #x
#define RNN_STR(x) RNN_STR_(x)
#define RNN_CAT_(name, isa) name##_##isa
#define RNN_CAT(name, isa) RNN_CAT_(name, isa)
#define RNN_FN(name) RNN_CAT(name, RNN_ISA)

/* RNN_KERNELS_TYPES_ONLY: the types and the ABI above, without the variants' code, for the
 * extensions that only step cores core.kernels built (_plan, _exec): the kernels are compiled
 * once, in core.kernels. */
#ifndef RNN_KERNELS_TYPES_ONLY

/* RNN_KERNELS_PART splits the variants over three translation units that the build compiles
 * side by side (setup.py; one unit took 59 s): 1 = serial and neon, and the table lookup
 * (with the Cython code); 2 = avx2 with its integer int8 product; 3 = avx512 with its
 * integer, dot-product and AMX entries. Unset (0): everything in one unit (the C tests, the AArch64
 * header check). */
#ifndef RNN_KERNELS_PART
#define RNN_KERNELS_PART 0
#endif
#define RNN_KP_NARROW (RNN_KERNELS_PART == 0 || RNN_KERNELS_PART == 1)
#define RNN_KP_AVX2 (RNN_KERNELS_PART == 0 || RNN_KERNELS_PART == 2)
#define RNN_KP_WIDE (RNN_KERNELS_PART == 0 || RNN_KERNELS_PART == 3)
/* what one part defines and the other calls: external linkage when split */
#if RNN_KERNELS_PART
#define RNN_KP_SHARED
#else
#define RNN_KP_SHARED static
#endif

/* The panel products of every weight type for the current vec_<isa>.h, then its GEMM entries,
 * gate math and table. */
#define RNN_VARIANT_BODY "rnnengine/variant.h"

/* vec_serial.h's scalar helpers (rounding, conversions) serve every variant's GEMM entries */
#include "rnnengine/vec_serial.h"
#if RNN_KP_NARROW
#include RNN_VARIANT_BODY
#endif
#include "rnnengine/vec_undef.h"

#if RNN_X86 && RNN_KP_AVX2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#include "rnnengine/vec_avx2.h"
#include RNN_VARIANT_BODY
#include "rnnengine/gemm_madd.h"
#include "rnnengine/vec_undef.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* RNN_X86 && RNN_KP_AVX2 */

#if RNN_X86 && RNN_KP_WIDE
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw")
#endif
#include "rnnengine/vec_avx512.h"
#include RNN_VARIANT_BODY
#include "rnnengine/gemm_madd.h"
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx512vnni"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx512vnni")
#endif
#include "rnnengine/gemm_dot.h"
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx512vnni,amx-tile,amx-bf16"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx512vnni,amx-tile,amx-bf16")
#endif
#include "rnnengine/gemm_amx.h"
#include "rnnengine/vec_undef.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* RNN_X86 && RNN_KP_WIDE */

/* NEON's SDOT entries need dotprod intrinsics callable under a target region: GCC's
 * arm_neon.h declares them so; clang's only from version 17 (before, only under -march). */
#if RNN_ARM && (!defined(__clang__) || __clang_major__ >= 17 || defined(__ARM_FEATURE_DOTPROD))
#define RNN_NEON_SDOT 1
#else
#define RNN_NEON_SDOT 0
#endif

#if RNN_ARM && RNN_KP_NARROW
#include "rnnengine/vec_neon.h"
#include RNN_VARIANT_BODY
#define RNN_NEON_DOT 0
#include "rnnengine/gemm_neon_i8.h"
#if RNN_NEON_SDOT
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#else
#pragma GCC push_options
/* arm_neon.h declares SDOT under armv8.2-a+dotprod, and inlining wants the caller's target
 * to include the callee's; a CPU with dotprod implements ARMv8.2 (the feature's minimum) */
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif
#define RNN_NEON_DOT 1
#include "rnnengine/gemm_neon_i8.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* RNN_NEON_SDOT */
#include "rnnengine/vec_undef.h"

/* The neon table with its integer int8 product: SDOT where the CPU has it, else SMULL
 * (gemm_neon_i8.h; both give the serial variant's bits). */
static const rnn_kernels_t *rnn_kernels_neon_int(void) {
    static rnn_kernels_t t;
    static int ready;
    if (!ready) {
        t = rnn_kernels_neon;
        t.gemm[RNN_W_I8] = rnn_gemm_i8_neonsmull;
        t.gemm[RNN_W_I8R] = rnn_gemm_i8r_neonsmull;
        t.gemm_isa[RNN_W_I8] = t.gemm_isa[RNN_W_I8R] = "neonsmull";
#if RNN_NEON_SDOT
        if (rnn_cpu_has(RNN_CPU_ASIMDDP)) {
            t.gemm[RNN_W_I8] = rnn_gemm_i8_neondot;
            t.gemm[RNN_W_I8R] = rnn_gemm_i8r_neondot;
            t.gemm_isa[RNN_W_I8] = t.gemm_isa[RNN_W_I8R] = "neondot";
        }
#endif
        ready = 1;
    }
    return &t;
}
#endif

#if RNN_X86
RNN_KP_SHARED const rnn_kernels_t *rnn_kernels_avx2_madd(void);
RNN_KP_SHARED const rnn_kernels_t *rnn_kernels_avx512_dot(unsigned hide);
RNN_KP_SHARED const rnn_kernels_t *rnn_kernels_amx(unsigned hide);
#endif

#if RNN_X86 && RNN_KP_AVX2
/* The avx2 table with the integer int8 product. */
RNN_KP_SHARED const rnn_kernels_t *rnn_kernels_avx2_madd(void) {
    static rnn_kernels_t t;
    static int ready;
    if (!ready) {
        t = rnn_kernels_avx2;
        rnn_kernels_use_avx2madd(&t);
        ready = 1;
    }
    return &t;
}

#endif

#if RNN_X86 && RNN_KP_WIDE
/* The avx512 table with the dot-product GEMM entries this CPU has (vdpbf16ps, vpdpbusd);
 * without VNNI, int8 takes the 512-bit integer product of gemm_madd.h. hide: features
 * (1 << enum rnn_cpu_feature) to act as if the CPU lacked, so tests and benchmarks run the
 * products of such a CPU here; one table per combination. */
RNN_KP_SHARED const rnn_kernels_t *rnn_kernels_avx512_dot(unsigned hide) {
    static rnn_kernels_t t[1u << RNN_CPU_FEATURES];
    static int ready[1u << RNN_CPU_FEATURES];
    hide &= (1u << RNN_CPU_FEATURES) - 1u;
    if (!ready[hide]) {
        rnn_kernels_t *k = &t[hide];
        *k = rnn_kernels_avx512;
        if (rnn_cpu_has(RNN_CPU_AVX512BF16) && !(hide >> RNN_CPU_AVX512BF16 & 1u)) {
            k->gemm[RNN_W_BF16] = rnn_gemm_bf16_avx512bf16;
            k->gemm_isa[RNN_W_BF16] = "avx512bf16";
        }
        if (rnn_cpu_has(RNN_CPU_AVX512VNNI) && !(hide >> RNN_CPU_AVX512VNNI & 1u)) {
            k->gemm[RNN_W_I8] = rnn_gemm_i8_avx512vnni;
            k->gemm_isa[RNN_W_I8] = "avx512vnni";
            k->gemm[RNN_W_I8R] = rnn_gemm_i8r_avx512vnni;
            k->gemm_isa[RNN_W_I8R] = "avx512vnni";
        } else {
            rnn_kernels_use_avx512madd(k);
        }
        ready[hide] = 1;
    }
    return &t[hide];
}

/* avx512 with AMX tiles for bf16 (callers check rnn_cpu_supports(RNN_ISA_AMX) first). */
RNN_KP_SHARED const rnn_kernels_t *rnn_kernels_amx(unsigned hide) {
    static rnn_kernels_t t[1u << RNN_CPU_FEATURES];
    static int ready[1u << RNN_CPU_FEATURES];
    hide &= (1u << RNN_CPU_FEATURES) - 1u;
    if (!ready[hide]) {
        rnn_kernels_t *k = &t[hide];
        *k = *rnn_kernels_avx512_dot(hide);
        k->gemm[RNN_W_BF16] = rnn_gemm_bf16_amx;
        k->gemm_isa[RNN_W_BF16] = "amx";
        k->release = rnn_amx_release;
        k->gemm_memo[RNN_W_BF16] = RNN_AMX_MEMO;
        k->gemm2[RNN_W_BF16] = rnn_gemm2_bf16_amx;
        ready[hide] = 1;
    }
    return &t[hide];
}
#endif

#if RNN_KP_NARROW
/* The variant's table, or NULL if it is not compiled into this build (x86 variants on
 * AArch64, neon on x86). hide: CPU features its products act as if missing
 * (rnn_kernels_avx512_dot; 0 for the products this CPU has). */
static inline const rnn_kernels_t *rnn_kernels_hiding(int isa, unsigned hide) {
    (void)hide;
    switch (isa) {
    case RNN_ISA_SERIAL:
        return &rnn_kernels_serial;
#if RNN_X86
    case RNN_ISA_AVX2:
        return rnn_kernels_avx2_madd();
    case RNN_ISA_AVX512:
        return rnn_kernels_avx512_dot(hide);
    case RNN_ISA_AMX:
        return rnn_kernels_amx(hide);
#endif
#if RNN_ARM
    case RNN_ISA_NEON:
        return rnn_kernels_neon_int();
#endif
    default:
        return NULL;
    }
}

static inline const rnn_kernels_t *rnn_kernels_for(int isa) { return rnn_kernels_hiding(isa, 0); }
#endif

#endif /* RNN_KERNELS_TYPES_ONLY */

#endif
