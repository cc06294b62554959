# Declarations of the C headers in include/rnnengine/ (one place for every .pyx).

cdef extern from "rnnengine/activations.h" nogil:
    ctypedef struct rnn_activation_t:
        int code
        float alpha
        float beta

cdef extern from "rnnengine/cells.h" nogil:
    enum:
        RNN_KIND_LSTM
        RNN_KIND_GRU
        RNN_KIND_RNN

    ctypedef struct rnn_cell_t:
        int kind
        int gates
        int input_size
        int hidden_size
        int output_size
        int reverse
        int input_forget
        int linear_before_reset
        float clip
        rnn_activation_t act[3]
        const float *W
        const float *R
        const float *bias
        const float *rbh
        const float *peep
        const float *proj

    void rnn_lstm_cell_f32_serial(const rnn_cell_t *cell, int N, const float *xp, int ldxp,
                                  float *rec, const float *c_prev, float *c_next,
                                  float *h_out, int ldh)
    void rnn_gru_zr_f32_serial(const rnn_cell_t *cell, int N, const float *xp, int ldxp,
                               float *rec)
    void rnn_gru_reset_f32_serial(const rnn_cell_t *cell, int N, const float *rec,
                                  const float *h_prev, float *rh)
    void rnn_gru_h_f32_serial(const rnn_cell_t *cell, int N, const float *xp, int ldxp,
                              float *rec, const float *h_prev, float *h_next)
    void rnn_rnn_cell_f32_serial(const rnn_cell_t *cell, int N, const float *xp, int ldxp,
                                 float *rec, float *h_next)
