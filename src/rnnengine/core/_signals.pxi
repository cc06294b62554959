# Included by kernels.pyx and conv.pyx (each declares rnn_cancel_t: include/rnnengine/cancel.h).
# -- Ctrl-C during a long sequence or convolution -------------------------------------------
# The sequence loop (and a long convolution) runs without the GIL, so Python's SIGINT
# handler cannot run until it returns. Between timesteps (a convolution: between column
# chunks) the C code asks check_signals (rnn_cancel_t), which every SIGNAL_CHECK_SECONDS
# takes the GIL and runs PyErr_CheckSignals: a KeyboardInterrupt stops the loop and is
# raised by the caller. Only on the main thread (the only one Python's signal handlers run
# on), so runs on other threads never contend for the GIL here.

cdef extern from "Python.h":
    # Declared without an exception clause: the error it sets is raised later, by the caller,
    # once the GIL is held again (raise_pending).
    int check_signals_keep_error "PyErr_CheckSignals" ()

DEF SIGNAL_CHECK_SECONDS = 0.02
MAIN_THREAD = threading.main_thread().ident

ctypedef struct signal_watch_t:
    double next_check
    int interrupted


cdef double monotonic_seconds() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef int check_signals(void *ctx) noexcept nogil:
    cdef signal_watch_t *watch = <signal_watch_t *>ctx
    cdef double now = monotonic_seconds()
    if watch.interrupted:
        return 1
    if now < watch.next_check:
        return 0
    watch.next_check = now + SIGNAL_CHECK_SECONDS
    with gil:
        if check_signals_keep_error() != 0:
            watch.interrupted = 1
    return watch.interrupted


cdef const rnn_cancel_t *watch_signals(rnn_cancel_t *cancel, signal_watch_t *watch):
    """cancel set up to watch for Ctrl-C when called on the main thread, else NULL."""
    watch.interrupted = 0
    watch.next_check = monotonic_seconds() + SIGNAL_CHECK_SECONDS
    cancel.fn = check_signals
    cancel.ctx = watch
    return cancel if PyThread_get_thread_ident() == MAIN_THREAD else NULL


cdef int raise_pending() except -1:
    """Propagates the exception check_signals left set (KeyboardInterrupt)."""
    return -1
