/* RNN_ASSERT(cond): checks a condition the C side must not take on trust (buffer extents,
 * "unreachable" branches). On in debug and sanitizer builds (RNNENGINE_DEBUG, which setup.py
 * defines for RNNENGINE_DEBUG=1, or any build without NDEBUG); compiled out of release builds,
 * where the Cython wrappers have already raised on the same conditions.
 *
 * A failed check prints the condition and its place and aborts: past this point memory
 * would be read or written out of bounds, which is worse than stopping. */
#ifndef RNNENGINE_ASSERT_H
#define RNNENGINE_ASSERT_H

#if defined(RNNENGINE_DEBUG) || !defined(NDEBUG)
#include <stdio.h>
#include <stdlib.h>

static void rnn_assert_fail(const char *cond, const char *file, int line) {
    fprintf(stderr, "rnnengine: internal check failed: %s (%s:%d)\n", cond, file, line);
    fflush(stderr);
    abort();
}

#define RNN_ASSERT(cond) ((cond) ? (void)0 : rnn_assert_fail(#cond, __FILE__, __LINE__))
#define RNN_ASSERTS_ON 1
#else
#define RNN_ASSERT(cond) ((void)0)
#define RNN_ASSERTS_ON 0
#endif

#endif
