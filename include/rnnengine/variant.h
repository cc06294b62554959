/* Everything of one ISA variant over the vec_<isa>.h included before it (no include guard:
 * kernels.h includes it once per variant): the vector math, the panel product of each weight
 * type (gemm_impl.h, named rnn_panel_<shape>_<wtype>_<isa>), the GEMM entries, the gate math
 * and the variant's table. A new weight type is a block here and an entry in gemm_entries.h. */
#include "rnnengine/math_impl.h"

#define RNN_WT f32
#define RNN_WT_T float
#define RNN_KS 1
#define RNN_WT_LOADJ(p, j) rnn_v_load(p)
#include "rnnengine/gemm_impl.h"

#define RNN_WT f16
#define RNN_WT_T uint16_t
#define RNN_KS 1
#define RNN_WT_LOADJ(p, j) rnn_v_load_f16(p)
#include "rnnengine/gemm_impl.h"

#define RNN_WT bf16
#define RNN_WT_T uint16_t
#define RNN_KS 2
#define RNN_WT_LOADJ(p, j) rnn_v_load_bf16((p), (j))
#include "rnnengine/gemm_impl.h"

#define RNN_WT i8
#define RNN_WT_T int8_t
#define RNN_KS 4
#define RNN_WT_LOADJ(p, j) rnn_v_load_i8((p), (j))
#include "rnnengine/gemm_impl.h"

#include "rnnengine/gemm_entries.h"
#include "rnnengine/kernels_impl.h"
