# Declarations of the C headers in include/rnnengine/ (one place for every .pyx).

cdef extern from "rnnengine/cpu.h" nogil:
    enum:
        RNN_ISA_SERIAL
        RNN_ISA_AVX2
        RNN_ISA_AVX512
        RNN_ISA_AMX
        RNN_ISA_COUNT
    enum:
        RNN_CPU_AVX512BF16
        RNN_CPU_AVX512VNNI
    const char *const rnn_isa_names[]
    int rnn_cpu_supports(int isa)
    int rnn_cpu_best_isa()

cdef extern from "rnnengine/activations.h" nogil:
    enum:
        RNN_ACT_RELU
        RNN_ACT_TANH
        RNN_ACT_SIGMOID
        RNN_ACT_AFFINE
        RNN_ACT_LEAKYRELU
        RNN_ACT_THRESHOLDEDRELU
        RNN_ACT_SCALEDTANH
        RNN_ACT_HARDSIGMOID
        RNN_ACT_ELU
        RNN_ACT_SOFTSIGN
        RNN_ACT_SOFTPLUS
    ctypedef struct rnn_activation_t:
        int code
        float alpha
        float beta

cdef extern from "rnnengine/cells.h" nogil:
    enum:
        RNN_BW
        RNN_KIND_LSTM
        RNN_KIND_GRU
        RNN_KIND_RNN
        RNN_W_F32
        RNN_W_F16
        RNN_W_BF16
        RNN_W_I8
        RNN_W_I8R
        RNN_W_COUNT
    const char *const rnn_wtype_names[]
    float RNN_I8_FINE

    ctypedef struct rnn_cell_t:
        int kind
        int gates
        int gates_h
        int input_size
        int hidden_size
        int output_size
        int blocks
        int proj_blocks
        int reverse
        int input_forget
        int linear_before_reset
        float clip
        rnn_activation_t act[3]
        int wtype
        const void *px
        const void *ph
        const void *prh
        const void *pproj
        const float *bias
        const float *rbh
        const float *peep

    size_t rnn_panel_bytes(int wtype, int K, int G)

    ctypedef struct rnn_step_io_t:
        int N
        int backward
        const float *x
        size_t ldx
        float *xp
        size_t ldxp
        const float *h_prev
        float *h_next
        float *c
        float *hraw
        float *zs
        float *hx
        float *rh

cdef extern from "rnnengine/kernels.h" nogil:
    ctypedef struct rnn_kernels_t:
        void (*activate)(rnn_activation_t a, float *x, size_t n) noexcept nogil
        float (*read_sum)(const float *p, size_t n, int backward) noexcept nogil
        float (*fma_loop)(long iters) noexcept nogil
        int vector_width
        const char *gemm_isa[RNN_W_COUNT]
    const rnn_kernels_t *rnn_kernels_for(int isa)
    const rnn_kernels_t *rnn_kernels_hiding(int isa, unsigned hide)

cdef extern from "rnnengine/workers.h" nogil:
    ctypedef struct rnn_pool_t:
        pass
    rnn_pool_t *rnn_pool_create(int nthreads)
    void rnn_pool_destroy(rnn_pool_t *pool)
    int rnn_pool_threads(const rnn_pool_t *pool)
    int rnn_flag_try_acquire(int *flag)
    void rnn_flag_release(int *flag)

cdef extern from "rnnengine/assert.h" nogil:
    enum:
        RNN_ASSERTS_ON

cdef extern from "rnnengine/driver.h" nogil:
    ctypedef struct rnn_cancel_t:
        int (*fn)(void *ctx) noexcept nogil
        void *ctx

    ctypedef struct rnn_stack_run_t:
        const rnn_cell_t *const *cells
        int L
        int D
        int T
        int N
        const float *x
        size_t x_len
        const int *lengths
        float *h
        size_t h_len
        float *c
        size_t c_len
        float *y
        size_t y_len
        float *work
        size_t work_len

    size_t rnn_stack_workspace(const rnn_cell_t *const *cells, int L, int D, int T, int N,
                               size_t *seq, size_t *layer_out)
    int rnn_run_stack(const rnn_kernels_t *k, rnn_pool_t *pool, const rnn_stack_run_t *s,
                      const rnn_cancel_t *cancel)
    size_t rnn_stack_step_scratch(const rnn_cell_t *const *cells, int L, int N)
    void rnn_stack_step(const rnn_kernels_t *k, rnn_pool_t *pool,
                        const rnn_cell_t *const *cells, int L, int N, long long step,
                        const float *x, size_t x_len, const float *h_prev, float *h_next,
                        size_t h_len, float *c, size_t c_len, float *y, size_t y_len,
                        float *scratch, size_t scratch_len)
