/* Asked between chunks of a long computation (the timesteps of a sequence, the column
 * groups of a convolution); nonzero stops it (Ctrl-C: _signals.pxi checks Python's signals
 * from here every few milliseconds). NULL, or a NULL fn: never stop. */
#ifndef RNNENGINE_CANCEL_H
#define RNNENGINE_CANCEL_H

typedef struct {
    int (*fn)(void *ctx);
    void *ctx;
} rnn_cancel_t;

static inline int rnn_cancelled(const rnn_cancel_t *cancel) {
    return cancel && cancel->fn && cancel->fn(cancel->ctx);
}

#endif
