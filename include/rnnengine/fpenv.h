/* Subnormal floats flushed to zero while the kernels run (MXCSR FTZ + DAZ on x86).
 *
 * A sigmoid of a pre-activation below about -87 is a subnormal (1 / (1 + e^88) ~ 6e-39), and
 * a state that holds one makes every product it enters ~20x slower on x86 (microcode
 * assists): Silero VAD's LSTM in a pool of 16 took 1344 us per step with such a state against
 * 64 us with zeros. Flushing changes results only below FLT_MIN (1.2e-38), far under any
 * tolerance. The caller's mode is restored on the way out, so NumPy and the rest of the
 * process never see it; the pool's worker threads are ours and keep it for their lifetime.
 * Other architectures keep their default mode (the portable path is correct either way).
 */
#ifndef RNNENGINE_FPENV_H
#define RNNENGINE_FPENV_H

#include "rnnengine/cpu.h"
#if RNN_X86
#include <immintrin.h>
#endif

typedef unsigned rnn_fpenv_t;

#define RNN_MXCSR_FTZ_DAZ 0x8040u /* flush-to-zero (bit 15) | denormals-are-zero (bit 6) */

static inline rnn_fpenv_t rnn_fpenv_enter(void) {
#if RNN_X86
    const unsigned saved = _mm_getcsr();
    _mm_setcsr(saved | RNN_MXCSR_FTZ_DAZ);
    return saved;
#else
    return 0;
#endif
}

static inline void rnn_fpenv_leave(rnn_fpenv_t saved) {
#if RNN_X86
    _mm_setcsr(saved);
#else
    (void)saved;
#endif
}

#endif
