"""The C drivers do not trust their caller: handed a buffer smaller than the work needs, or a
stack whose layers disagree, a debug build (RNNENGINE_DEBUG, as tools/sanitize.sh builds)
stops with RNN_ASSERT before touching memory. Checked on a small C program built here from
include/rnnengine; the Cython wrappers raise on the same conditions in every build
(test_memory_safety.py)."""
import os
import shutil
import subprocess

import pytest
import conftest

INCLUDE = os.path.join(conftest.ROOT, "include")

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rnnengine/driver.h"

/* An LSTM cell I -> H with zero weights (the asserts fire before any weight is read). */
static rnn_cell_t cell(int I, int H) {
    rnn_cell_t c;
    const int HB = (H + RNN_BW - 1) / RNN_BW;
    memset(&c, 0, sizeof c);
    c.kind = RNN_KIND_LSTM;
    c.gates = c.gates_h = 4;
    c.input_size = I;
    c.hidden_size = c.output_size = H;
    c.blocks = HB;
    c.act[0].code = RNN_ACT_SIGMOID;
    c.act[1].code = c.act[2].code = RNN_ACT_TANH;
    c.px = calloc((size_t)HB * I * 4 * RNN_BW, sizeof(float));
    c.ph = calloc((size_t)HB * H * 4 * RNN_BW, sizeof(float));
    c.bias = calloc((size_t)HB * 4 * RNN_BW, sizeof(float));
    return c;
}

int main(int argc, char **argv) {
    const char *which = argv[1];
    const int T = 5, N = 2, I = 3, H = 4;
    rnn_cell_t c0 = cell(I, H);
    rnn_cell_t c1 = cell(strcmp(which, "other input") ? H : 7, strcmp(which, "wider layer") ? H : 40);
    const rnn_cell_t *cells[2] = {&c0, &c1};
    size_t seq, layer_out;
    size_t work_len = rnn_stack_workspace(cells, 2, 1, T, N, &seq, &layer_out);
    rnn_stack_run_t s;
    memset(&s, 0, sizeof s);
    s.cells = cells;
    s.L = 2; s.D = 1; s.T = T; s.N = N;
    s.x_len = (size_t)T * N * I;
    s.h_len = s.c_len = 2 * (size_t)N * H;
    s.y_len = (size_t)T * N * H;
    if (!strcmp(which, "short work")) work_len -= 1;
    if (!strcmp(which, "short h")) s.h_len -= 1;
    if (!strcmp(which, "short c")) s.c_len -= 1;
    if (!strcmp(which, "short y")) s.y_len -= 1;
    if (!strcmp(which, "short x")) s.x_len -= 1;
    s.x = calloc(s.x_len + 64, sizeof(float));
    s.h = calloc(s.h_len + 64, sizeof(float));
    s.c = calloc(s.c_len + 64, sizeof(float));
    s.y = calloc(s.y_len + 64, sizeof(float));
    s.work = calloc(work_len + 64, sizeof(float));
    s.work_len = work_len;
    int stopped = rnn_run_stack(rnn_kernels_for(RNN_ISA_SERIAL), NULL, &s, NULL);
    printf("ran %d\n", stopped);
    return 0;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    folder = tmp_path_factory.mktemp("driver")
    source, binary = folder / "drive.c", folder / "drive"
    source.write_text(PROGRAM)
    subprocess.run([compiler, "-std=c11", "-O1", "-DRNNENGINE_DEBUG=1", "-I", INCLUDE,
                    str(source), "-o", str(binary), "-lm", "-lpthread"], check=True,
                   capture_output=True, timeout=300)
    return str(binary)


def test_driver_runs_buffers_of_the_right_size(program):
    done = subprocess.run([program, "fits"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ran 0"), done.stderr


@pytest.mark.parametrize("case, check", [
    ("short work", "need <= s->work_len"),
    ("short h", "h_off + hs <= s->h_len"),
    ("short c", "!s->c || c_off + cs <= s->c_len"),
    ("short y", "rnn_span((size_t)T * N, ldy, Ho) <= y_len"),
    ("short x", "rnn_span((size_t)T * N, ldx, c->input_size) <= x_len"),
    ("wider layer", "h_off + hs <= s->h_len"),
    ("other input", "(size_t)c->input_size == ld_in"),
])
def test_driver_asserts_buffer_sizes(program, case, check):
    done = subprocess.run([program, case], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ran" not in done.stdout, (case, done.stdout)
    assert f"rnnengine: internal check failed: {check}" in done.stderr, done.stderr
