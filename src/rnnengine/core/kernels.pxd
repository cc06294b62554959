# StreamCore's C-level face, for the compiled session-stream runner (_plan.pyx), which steps
# the very cores a session stream's recurrent nodes keep their state in, without a Python
# call per node. The attributes are documented in kernels.pyx.
cimport numpy as cnp

from .cells cimport rnn_cell_t, rnn_kernels_t, rnn_pool_t, rnn_stack_run_t


# The variant chosen now (set_isa may change it): the executor's activations run from it.
cdef const rnn_kernels_t *active_kernels() noexcept nogil
# Its enum rnn_isa value: the dense products (dense.h) and convolutions (conv.h) run that
# variant's code too.
cdef int active_isa() noexcept nogil


cdef class StreamCore:
    cdef list _cells
    cdef const rnn_cell_t **_descs
    cdef rnn_pool_t *_pool
    cdef int _L, _N, _I, _Hout
    cdef int _parity, _steps, _busy, _threads
    cdef bint _nogil
    cdef object _hbuf, _cbuf, _scratch
    cdef float *_h[2]
    cdef float *_c
    cdef float *_scr
    cdef size_t _h_len, _c_len, _scr_len

    cdef int _acquire(self) except -1
    cdef void _step_all(self, const float *x, float *y) noexcept nogil
    cdef cnp.ndarray _check_out(self, out, int nd, cnp.npy_intp *dims)


cdef class SequenceCore:
    cdef const rnn_cell_t **_descs
    cdef rnn_pool_t *_pool
    cdef rnn_stack_run_t _run
    cdef object _cells, _work
    cdef readonly int steps, batch, inputs, layers, dirs, hout, hidden
    cdef readonly bint lstm

    cdef int _go(self, const float *x, float *h, float *c, float *y) except -1
