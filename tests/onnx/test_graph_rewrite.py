"""Unrolled LSTM/GRU cells (no recurrent node in the file) run on the fused kernels after
graph_rewrite.fuse_unrolled_cells; everything is compared with ONNX Runtime on the original,
unrewritten file (within 1e-4): run, stream over 200 steps against the author loop, pools
against separate loops. Near misses must be left alone and still match."""
import os

import numpy as np
import onnx
import pytest

import session_models as sm
import unrolled_models as um
from rnnengine import InferenceSession
from rnnengine.onnx import rewrite as graph_rewrite
from rnnengine.onnx.rewrite import REWRITTEN, fuse_unrolled_cells

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from stream_checks import check_pool, check_stream  # noqa: E402
import conftest

TOL = dict(rtol=1e-4, atol=1e-4)
DATA = conftest.DATA
EXPORTERS = ["torchscript", "dynamo"]


@pytest.fixture(scope="module")
def torch_models():
    return {(kind, how): um.torch_cell(kind, how == "dynamo")
            for kind in ("lstm", "gru") for how in EXPORTERS}


def random_feeds(model, rng, batch):
    feeds = {}
    for a in sm.ort_session(model).get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in a.shape]
        feeds[a.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def check_run(model, batches=(1, 3)):
    sess, ort = InferenceSession(model), sm.ort_session(model)
    rng = np.random.default_rng(1)
    for batch in batches:
        feeds = random_feeds(model, rng, batch)
        want, got = ort.run(None, feeds), sess.run(None, feeds)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a, b, **TOL)
    return sess


def recurrent(sess):
    return {k for k, v in sess.placement().items() if v == "recurrent"}


def activations(sess):
    """Sigmoid/Tanh nodes of the original graph still planned as operators."""
    plan = sess.plan
    return [n.op_type for n in plan.nodes if n.op_type in ("Sigmoid", "Tanh")]


def step_feeds(rng, features, n=200):
    return [{"x": rng.standard_normal((1, features)).astype(np.float32)} for _ in range(n)]


# -- PyTorch nn.LSTMCell / nn.GRUCell, both exporters -------------------------------------

@pytest.mark.parametrize("how", EXPORTERS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_cell_runs_as_one_recurrent_node(torch_models, kind, how):
    model = torch_models[kind, how]
    original = onnx.load_from_string(model)
    assert not {"LSTM", "GRU"} & {n.op_type for n in original.graph.node}  # unrolled export
    sess = check_run(model)
    assert recurrent(sess) == {f"{kind.upper()} cell hn"}
    assert activations(sess) == []
    pairs = {"hn": "h", "cn": "c"} if kind == "lstm" else {"hn": "h"}
    assert sess.state_pairs() == pairs


@pytest.mark.parametrize("how", EXPORTERS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_cell_streams_200_steps(torch_models, kind, how):
    pairs = {"hn": "h", "cn": "c"} if kind == "lstm" else {"hn": "h"}
    zero = {i: np.zeros((1, 16), np.float32) for i in pairs.values()}
    stream = check_stream(torch_models[kind, how], step_feeds(np.random.default_rng(4), 10),
                          pairs, zero)
    # the cell is one recurrent node: its state kept inside the kernels by a compiled step,
    # or (the Gemm head being no operator of that step) fed in and out of one program
    status = " ".join(stream._sess.program_status().values())
    assert stream.compiled or ("1 recurrent" in status and "call" not in status), status


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_cell_pool_of_interleaved_streams(torch_models, kind):
    pairs = {"hn": "h", "cn": "c"} if kind == "lstm" else {"hn": "h"}
    zero = {i: np.zeros((1, 16), np.float32) for i in pairs.values()}
    check_pool(torch_models[kind, "dynamo"],
               lambda rng: {"x": rng.standard_normal((1, 10)).astype(np.float32)},
               pairs, zero, 6, 40)


def test_input_as_wide_as_the_state_is_told_apart_by_weight_name():
    """I == H: both projections could be the recurrent one; PyTorch's weight_hh decides,
    so the stream carries h (not x) as state."""
    model = um.torch_cell("lstm", False, features=16)
    sess = check_run(model)
    assert recurrent(sess) and sess.state_pairs() == {"hn": "h", "cn": "c"}
    zero = {i: np.zeros((1, 16), np.float32) for i in ("h", "c")}
    check_stream(model, step_feeds(np.random.default_rng(5), 16, 60), {"hn": "h", "cn": "c"},
                 zero)


def test_input_as_wide_as_the_state_without_a_hint_is_left_alone():
    model = um.keras_lstm_cell(features=8, units=8)
    for t in model.graph.initializer:
        if t.name == "recurrent_kernel":
            t.name = "w2"
    for n in model.graph.node:
        n.input[:] = ["w2" if i == "recurrent_kernel" else i for i in n.input]
    assert fuse_unrolled_cells(model, None) is model
    assert not recurrent(check_run(model))


def test_input_as_wide_as_the_state_is_told_apart_by_the_state_tensor():
    """I == H, no weight-name hint, h and c taken out of one state input [2, N, H] and put
    back into one output: the operand read from the tensor c comes from is h (x is not),
    so the cell becomes a recurrent node and a stream carries h, not x, as its state."""
    model = um.keras_lstm_cell(features=8, units=8)
    g = model.graph
    for t in g.initializer:
        if t.name == "recurrent_kernel":
            t.name = "w2"
    for n in g.node:
        n.input[:] = ["w2" if i == "recurrent_kernel" else i for i in n.input]
    N = g.input[0].type.tensor_type.shape.dim[0]
    state = onnx.helper.make_tensor_value_info("state", onnx.TensorProto.FLOAT, [2, None, 8])
    state.type.tensor_type.shape.dim[1].CopyFrom(N)
    kept = [i for i in g.input if i.name == "x"]
    del g.input[:]
    g.input.extend(kept + [state])
    g.initializer.extend([onnx.numpy_helper.from_array(np.array(k, np.int64), f"k{k}")
                          for k in (0, 1)] +
                         [onnx.numpy_helper.from_array(np.array([0], np.int64), "ax0")])
    head = [onnx.helper.make_node("Gather", ["state", "k0"], ["h"], axis=0),
            onnx.helper.make_node("Gather", ["state", "k1"], ["c"], axis=0)]
    tail = [onnx.helper.make_node("Unsqueeze", ["h_new", "ax0"], ["h_u"]),
            onnx.helper.make_node("Unsqueeze", ["c_new", "ax0"], ["c_u"]),
            onnx.helper.make_node("Concat", ["h_u", "c_u"], ["state_out"], axis=0)]
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    out = onnx.helper.make_tensor_value_info("state_out", onnx.TensorProto.FLOAT, [2, None, 8])
    out.type.tensor_type.shape.dim[1].CopyFrom(N)
    kept = [o for o in g.output if o.name == "y"]
    del g.output[:]
    g.output.extend(kept + [out])
    onnx.checker.check_model(model)
    sess = check_run(model)
    assert len(recurrent(sess)) == 1 and not activations(sess)
    lstm = next(n for n in fuse_unrolled_cells(model, None).graph.node if n.op_type == "LSTM")
    unsqueezed = {n.output[0]: n.input[0] for n in fuse_unrolled_cells(model, None).graph.node
                  if n.op_type == "Unsqueeze"}
    assert unsqueezed[lstm.input[0]] == "x" and unsqueezed[lstm.input[5]] == "h"
    pairs = {"state_out": "state"}
    zero = {"state": np.zeros((2, 1, 8), np.float32)}
    check_stream(model, step_feeds(np.random.default_rng(7), 8, 100), pairs, zero)


def test_input_as_wide_as_the_state_is_told_apart_by_the_previous_step():
    """A loop over a cell with I == H and the weights renamed (no hint): the first cell's
    x and h are both graph inputs and it is left alone; every later cell's h is o * tanh(c)
    of the very c it reads, the previous step's, so it is h and those cells are rewritten."""
    model = onnx.load_from_string(um.torch_cell_loop(steps=3, features=16, hidden=16))
    rename = {t.name: f"w{k}" for k, t in enumerate(model.graph.initializer)}
    for t in model.graph.initializer:
        t.name = rename[t.name]
    for n in model.graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
    rewritten = fuse_unrolled_cells(model, None)
    assert [n.op_type for n in rewritten.graph.node].count("LSTM") == 2
    assert len(recurrent(check_run(model.SerializeToString()))) == 2


# -- tf2onnx-style Keras cells (onnx.helper) ----------------------------------------------

KERAS = {
    "split": lambda: um.keras_lstm_cell(),
    "slices": lambda: um.keras_lstm_cell(gates="slice"),
    "concat_matmul": lambda: um.keras_lstm_cell(gates="concat"),
    "blocks_c_f_o_i": lambda: um.keras_lstm_cell(order="cfoi"),
    "opset18_split": lambda: um.keras_lstm_cell(opset=18),
    "gru": lambda: um.keras_gru_cell(),
}


@pytest.mark.parametrize("variant", sorted(KERAS))
def test_keras_style_cell(variant):
    model = KERAS[variant]()
    sess = check_run(model)
    kind = "GRU" if variant == "gru" else "LSTM"
    assert recurrent(sess) == {f"{kind} cell h_new"}
    assert activations(sess) == []
    pairs = {"h_new": "h"} if kind == "GRU" else {"h_new": "h", "c_new": "c"}
    zero = {i: np.zeros((1, 8), np.float32) for i in pairs.values()}
    check_stream(model, step_feeds(np.random.default_rng(6), 6), pairs, zero)


def test_rewritten_node_says_what_it_replaced_and_leaves_the_callers_model_alone():
    model = um.keras_lstm_cell()
    before = model.SerializeToString()
    out = fuse_unrolled_cells(model, None)
    assert model.SerializeToString() == before
    cells = [n for n in out.graph.node if n.op_type == "LSTM"]
    assert len(cells) == 1 and cells[0].doc_string.startswith(REWRITTEN)
    assert not {"Split", "Sigmoid"} & {n.op_type for n in out.graph.node}
    onnx.checker.check_model(out, full_check=True)
    rewritten, original = sm.ort_session(out), sm.ort_session(model)
    feeds = random_feeds(model, np.random.default_rng(2), 4)
    for a, b in zip(rewritten.run(None, feeds), original.run(None, feeds)):
        np.testing.assert_allclose(a, b, **TOL)   # ORT agrees the rewrite is the same math


# -- near misses: left alone, and still right ---------------------------------------------

@pytest.mark.parametrize("change", ["second_consumer", "weight_input", "relu", "hard_sigmoid"])
def test_near_miss_is_not_rewritten(change):
    model = um.keras_lstm_cell(change=change)
    assert fuse_unrolled_cells(model, None) is model
    sess = check_run(model)
    assert not recurrent(sess)
    assert sorted(activations(sess)) != []


def test_broadcast_state_is_not_rewritten():
    """A state of batch 1 against inputs of batch 3 broadcasts in the Mul (ORT allows it);
    that is no recurrent state, so the cell stays as operators."""
    model = um.keras_lstm_cell()
    c = model.graph.input[2].type.tensor_type.shape.dim
    c[0].Clear()
    c[0].dim_value = 1
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    assert fuse_unrolled_cells(model, None) is model


def test_cell_inside_an_if_branch_with_outer_weights():
    model = um.cell_in_if_branch()
    sess, ort = InferenceSession(model), sm.ort_session(model)
    assert recurrent(sess) == {"LSTM cell h_new"}
    rng = np.random.default_rng(3)
    for run in (True, False):
        feeds = {**random_feeds(um.keras_lstm_cell(), rng, 2), "run": np.array(run)}
        for a, b in zip(sess.run(None, feeds), ort.run(None, feeds)):
            np.testing.assert_allclose(a, b, **TOL)


def test_info_shows_the_cell_on_the_recurrent_kernels(tmp_path, capsys):
    from rnnengine.cli import main
    path = tmp_path / "cell.onnx"
    path.write_bytes(um.torch_cell("gru", True))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "runs recurrent kernels  1 nodes: GRU 1" in " ".join(out.split("\n"))
    assert "unrolled cell" in out and "GRU cell hn" in out


# -- mutants: whatever the matcher decides, the session must agree with ORT ---------------

def _mutant(model, rng):
    """A copy of ``model`` with one or two random edits inside the cell: an input rewired to
    an earlier value, an operator swapped (Sigmoid/Tanh, Mul/Add/Sub), inputs swapped."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = out.graph.node
    for _ in range(rng.integers(1, 3)):
        k = int(rng.integers(len(nodes)))
        node = nodes[k]
        what = rng.integers(3)
        if what == 0 and node.input:
            earlier = [i.name for i in out.graph.input] + [o for n in nodes[:k] for o in n.output]
            j = int(rng.integers(len(node.input)))
            node.input[j] = earlier[int(rng.integers(len(earlier)))]
        elif what == 1:
            swap = {"Sigmoid": "Tanh", "Tanh": "Sigmoid", "Mul": "Add", "Add": "Sub",
                    "Sub": "Mul"}
            node.op_type = swap.get(node.op_type, node.op_type)
        elif len(node.input) == 2:
            node.input[:] = [node.input[1], node.input[0]]
    return out


@pytest.mark.parametrize("base", ["keras_lstm", "keras_lstm_cfoi", "keras_gru", "torch_gru",
                                  "torch_loop"])
def test_mutants_agree_with_onnxruntime(base):
    models = {"keras_lstm": lambda: um.keras_lstm_cell(),
              "keras_lstm_cfoi": lambda: um.keras_lstm_cell(order="cfoi", gates="slice"),
              "keras_gru": lambda: um.keras_gru_cell(),
              "torch_gru": lambda: onnx.load_from_string(um.torch_cell("gru", False)),
              "torch_loop": lambda: onnx.load_from_string(um.torch_cell_loop())}
    model = models[base]()
    rng = np.random.default_rng(7)
    compared = rewritten = 0
    for _ in range(60):
        mutant = _mutant(model, rng)
        feeds = random_feeds(model, rng, 2)
        try:
            want = sm.ort_session(mutant).run(None, feeds)
        except Exception:   # ORT refuses the mutant (a type or shape that no longer fits)
            continue
        sess = InferenceSession(mutant)
        got = sess.run(None, feeds)
        for a, b in zip(got, want):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, **TOL)
        compared += 1
        rewritten += bool(recurrent(sess))
    assert compared >= 20 and 0 < rewritten <= compared


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_keras_export_of_a_cell(kind, tmp_path):
    """Keras' own ONNX export (torch backend): float->float Casts everywhere around the cell."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("the export checked here is the torch backend's")
    path = tmp_path / f"{kind}.onnx"
    um.keras_export(kind, path)
    model = onnx.load(str(path))
    sess = check_run(model)
    assert [k for k, v in sess.placement().items() if v == "recurrent"]
    assert activations(sess) == []
    outs = [o.name for o in model.graph.output]
    pairs = dict(zip(outs[1:], ["h", "c"] if kind == "lstm" else ["h"]))
    assert sess.state_pairs() == pairs
    zero = {i: np.zeros((1, 8), np.float32) for i in pairs.values()}
    check_stream(model, step_feeds(np.random.default_rng(8), 6), pairs, zero)


@pytest.mark.parametrize("to", [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16])
def test_only_casts_that_change_nothing_are_skipped(to):
    """Cast(float) on the gates is looked through; float -> float16 -> float rounds the
    gates, so that cell stays as operators (and still matches ORT)."""
    model = um.keras_lstm_cell()
    nodes = list(model.graph.node)
    at = next(k for k, n in enumerate(nodes) if n.op_type == "Split")
    nodes[at].input[0] = "z_back"
    nodes[at:at] = [onnx.helper.make_node("Cast", ["z"], ["z_cast"], to=to),
                    onnx.helper.make_node("Cast", ["z_cast"], ["z_back"],
                                          to=onnx.TensorProto.FLOAT)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    sess = check_run(model)
    assert bool(recurrent(sess)) == (to == onnx.TensorProto.FLOAT)


@pytest.mark.parametrize("kind,how", [("lstm", "torchscript"), ("gru", "dynamo")])
def test_loop_over_a_cell_becomes_one_node_over_the_sequence(kind, how):
    """A Python loop over nn.LSTMCell/GRUCell for every step of x [N, 3, I] exports as 3
    chained cells reading x[:, t]: one node runs all 3 steps; its states are the graph's, so
    the pairs are found and the model streams (3 steps per call) and pools."""
    model = um.torch_cell_loop(steps=3, kind=kind, dynamo=how == "dynamo")
    rewritten = fuse_unrolled_cells(onnx.load_from_string(model), None)
    onnx.checker.check_model(rewritten, full_check=True)
    assert [n.op_type for n in rewritten.graph.node].count(kind.upper()) == 1
    sess = check_run(model)
    assert recurrent(sess) == {f"{kind.upper()} cell hn"} and activations(sess) == []
    pairs = {"hn": "h", "cn": "c"} if kind == "lstm" else {"hn": "h"}
    zero = {i: np.zeros((1, 16), np.float32) for i in pairs.values()}
    rng = np.random.default_rng(9)
    steps = [{"x": rng.standard_normal((1, 3, 10)).astype(np.float32)} for _ in range(200)]
    check_stream(model, steps, pairs, zero)
    check_pool(model, lambda rng: {"x": rng.standard_normal((1, 3, 10)).astype(np.float32)},
               pairs, zero, 5, 30)


@pytest.mark.parametrize("variant", ["every_h_read", "fewer_steps_than_x"])
def test_loop_that_is_not_the_whole_sequence_stays_one_node_per_step(variant):
    """Each step's h read by the head, or a loop over 3 of x's 4 steps: the cells are
    rewritten one by one (weights shared), never joined."""
    model = (um.torch_cell_loop(steps=3, collect=True) if variant == "every_h_read"
             else um.torch_cell_loop(steps=3, length=4))
    rewritten = fuse_unrolled_cells(onnx.load_from_string(model), None)
    onnx.checker.check_model(rewritten, full_check=True)     # nodes still in order
    assert [n.op_type for n in rewritten.graph.node].count("LSTM") == 3
    assert len([t for t in rewritten.graph.initializer if "rnnengine_LSTM" in t.name]) == 3
    assert len(recurrent(check_run(model))) == 3


def test_a_matcher_error_leaves_the_graph_as_written(monkeypatch):
    """The rewrite is a speed-up: if it trips on a graph, the session plans the graph as
    written (and the answers still match ORT)."""
    def broken(*args):
        raise IndexError("matcher bug")
    monkeypatch.setattr(graph_rewrite, "match_lstm", broken)
    model = um.keras_lstm_cell()
    assert fuse_unrolled_cells(model, None) is model
    assert not recurrent(check_run(model))


def test_dtln_model_2_both_lstms_found_and_streamed_like_ort():
    """DTLN's model_2 (tf2onnx): the second LSTM's input is the first one's h, as wide as
    its state; the operand moved out of the state input together with c is h, so both
    layers become recurrent nodes, and 200 stream steps match ORT on the file as written."""
    path = os.path.join(DATA, "dtln_model_2.onnx")
    sess = InferenceSession(path)
    assert len(recurrent(sess)) == 2
    assert sess.state_pairs() == {"tf_op_layer_stack_5": "input_5"}
    ort = sm.ort_session(onnx.load(path))
    state = np.zeros((1, 2, 128, 2), np.float32)
    stream = sess.stream()
    rng = np.random.default_rng(3)
    for t in range(200):
        x = (0.3 * rng.standard_normal((1, 1, 512))).astype(np.float32)
        want, state = ort.run(None, {"input_4": x, "input_5": state})
        (got,) = stream.step({"input_4": x})
        np.testing.assert_allclose(got, want, err_msg=f"step {t}", **TOL)
    np.testing.assert_allclose(stream.state["input_5"], state, **TOL)
