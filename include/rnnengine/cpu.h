/* Which instruction-set variants this CPU can run.
 *
 * The kernels are compiled several times in one translation unit (kernels.h): portable C, and
 * on x86-64 also with AVX2+FMA and AVX-512 target attributes, on AArch64 with NEON. No -march
 * flag is used, so one binary runs on any x86-64; the variant is chosen at run time from CPUID
 * (libgcc's __builtin_cpu_supports, which also checks that the OS saves the wide registers).
 * NEON (Advanced SIMD) is part of every AArch64 CPU, so there it is always supported.
 */
#ifndef RNNENGINE_CPU_H
#define RNNENGINE_CPU_H

/* -DRNN_X86=0 builds the portable variant only, as on ARM (used to test that build). */
#ifndef RNN_X86
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define RNN_X86 1
#else
#define RNN_X86 0
#endif
#endif

/* -DRNN_ARM=0 builds the portable variant only on AArch64. */
#ifndef RNN_ARM
#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define RNN_ARM 1
#else
#define RNN_ARM 0
#endif
#endif

#if RNN_ARM && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20) /* the kernel's bit for SDOT/UDOT (asm/hwcap.h) */
#endif
#endif

#if RNN_X86
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
long syscall(long number, ...); /* hidden by -std=c11 without _GNU_SOURCE; Python.h sets it */
#endif
#endif

/* amx: the avx512 variant with AMX tiles for bf16 products (kernels.h). neon: AArch64 only
 * (last, so the x86 variants keep their numbers). */
enum rnn_isa {
    RNN_ISA_SERIAL = 0, RNN_ISA_AVX2 = 1, RNN_ISA_AVX512 = 2, RNN_ISA_AMX = 3, RNN_ISA_NEON = 4,
    RNN_ISA_COUNT = 5
};

static const char *const rnn_isa_names[RNN_ISA_COUNT] = {"serial", "avx2", "avx512", "amx",
                                                         "neon"};

/* AMX-TILE and AMX-BF16 in CPUID, and Linux's permission to use the tile state, requested
 * once per process (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, Linux 5.16+).
 * A refusal (older kernel, seccomp, another OS) leaves the variant unsupported. */
static inline int rnn_amx_permitted(void) {
#if RNN_X86 && defined(__linux__) && defined(__x86_64__)
    static int state = -1;
    if (state < 0) {
        unsigned a, b, c, d;
        state = 0;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 24) & 1) && ((d >> 22) & 1))
            state = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                            18 /* XFEATURE_XTILEDATA */) == 0;
    }
    return state;
#else
    return 0;
#endif
}

/* 1 if the variant was compiled into this build and this CPU and OS can run it. */
static inline int rnn_cpu_supports(int isa) {
    if (isa == RNN_ISA_SERIAL) return 1;
#if RNN_ARM
    if (isa == RNN_ISA_NEON) return 1;
#endif
#if RNN_X86
    __builtin_cpu_init();
    if (isa == RNN_ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (isa == RNN_ISA_AVX512 || isa == RNN_ISA_AMX) {
        const int avx512 =
            __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
        if (isa == RNN_ISA_AVX512) return avx512;
        return avx512 && __builtin_cpu_supports("avx512bf16") && rnn_amx_permitted();
    }
#endif
    return 0;
}

/* Instructions beyond a variant's baseline that some of its GEMM entries use (kernels.h).
 * ASIMDDP: AArch64's SDOT/UDOT (ARMv8.2 dotprod, optional before ARMv8.4), as Linux reports
 * it in the auxiliary vector; elsewhere (other OSes) taken as absent. */
enum rnn_cpu_feature { RNN_CPU_AVX512BF16 = 0, RNN_CPU_AVX512VNNI = 1, RNN_CPU_ASIMDDP = 2,
                       RNN_CPU_FEATURES = 3 };

static inline int rnn_cpu_has(int feature) {
#if RNN_X86
    __builtin_cpu_init();
    if (feature == RNN_CPU_AVX512BF16) return __builtin_cpu_supports("avx512bf16");
    if (feature == RNN_CPU_AVX512VNNI) return __builtin_cpu_supports("avx512vnni");
#endif
#if RNN_ARM && defined(__linux__)
    if (feature == RNN_CPU_ASIMDDP) return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
    (void)feature;
    return 0;
}

/* The widest variant this machine supports. */
static inline int rnn_cpu_best_isa(void) {
    for (int isa = RNN_ISA_COUNT - 1; isa > 0; isa--)
        if (rnn_cpu_supports(isa)) return isa;
    return RNN_ISA_SERIAL;
}

#endif
