/* RNN_ASSERT: checks that cost nothing in release builds and abort with the failed condition
 * in debug and sanitizer builds (setup.py defines RNN_DEBUG when RNNENGINE_DEBUG=1, which
 * tools/sanitize.sh sets). Used where a violated invariant would otherwise return silently
 * with wrong numbers (an "unreachable" default) or touch memory out of bounds. */
#ifndef RNNENGINE_ASSERT_H
#define RNNENGINE_ASSERT_H

#ifndef RNN_ASSERT
#ifdef RNN_DEBUG
#include <stdio.h>
#include <stdlib.h>
#define RNN_ASSERT(cond)                                                                  \
    ((cond) ? (void)0                                                                     \
            : (fprintf(stderr, "rnnengine: assertion failed: %s (%s:%d)\n", #cond,        \
                       __FILE__, __LINE__),                                               \
               abort()))
#else
#define RNN_ASSERT(cond) ((void)0)
#endif
#endif

#endif
