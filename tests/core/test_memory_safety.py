"""Issue 10: inputs that once reached out-of-bounds memory (layers of different widths, kernel
entry points handed buffers that do not fit, an uninitialised stream) and malformed graphs
(cycles). Anything that could crash runs in a subprocess (conftest.run_isolated)."""
import os

import numpy as np
import onnx
import pytest

import rnnengine
from conftest import load_fuzz_seeds, run_isolated
from rnnengine import ModelError
from rnnengine.testing.reference import onnx_rnn

seeds = load_fuzz_seeds()
GATES = {"lstm": 4, "gru": 3, "rnn": 1}

# Runs a Model (or refuses to build it) in a fresh interpreter: run, stream and pool.
BUILD_AND_RUN = """
    import numpy as np
    from rnnengine import Layer, Model, ModelError
    rng = np.random.default_rng(0)
    kind, sizes, I = {kind!r}, {sizes!r}, 3
    G = {{"lstm": 4, "gru": 3, "rnn": 1}}[kind]
    layers, width = [], I
    for H in sizes:
        layers.append(Layer.from_onnx(kind, rng.standard_normal((1, G * H, width), np.float32),
                                      rng.standard_normal((1, G * H, H), np.float32)))
        width = H
    try:
        model = Model(layers)
    except ModelError as e:
        print("refused:", e)
    else:
        model.run(np.ones((6, 2, I), np.float32))
        stream = model.stream(2)
        stream.step(np.ones((2, I), np.float32))
        stream.run(np.ones((4, 2, I), np.float32))
        pool = model.pool(4)
        pool.step([pool.open(), pool.open()], np.ones((2, I), np.float32))
        print("ran")
"""


@pytest.mark.parametrize("kind, sizes", [("lstm", (1, 256)), ("gru", (64, 3)),
                                         ("rnn", (2, 300)), ("lstm", (8, 8, 40))])
def test_model_of_layers_with_different_widths_is_refused(kind, sizes):
    done = run_isolated(BUILD_AND_RUN.format(kind=kind, sizes=sizes))
    assert done.returncode == 0, done.stderr[-3000:]
    wide = next(k for k, H in enumerate(sizes) if H != sizes[0])
    assert f"refused: layer {wide} has hidden size {sizes[wide]}" in done.stdout, done.stdout


def test_model_of_layers_with_one_width_still_runs():
    done = run_isolated(BUILD_AND_RUN.format(kind="gru", sizes=(5, 5, 5)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ran"


def torch_npz(path, shapes: dict):
    rng = np.random.default_rng(1)
    np.savez(path, **{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})
    return path


@pytest.mark.parametrize("shapes, named", [
    # layer 0 hidden 1, layer 1 hidden 64: weight_hh_l1 (256, 64)
    ({"weight_ih_l0": (4, 3), "weight_hh_l0": (4, 1),
      "weight_ih_l1": (256, 1), "weight_hh_l1": (256, 64)}, ["weight_hh_l1", "weight_hh_l0"]),
    # narrower second layer of a GRU
    ({"rnn.weight_ih_l0": (24, 3), "rnn.weight_hh_l0": (24, 8),
      "rnn.weight_ih_l1": (6, 8), "rnn.weight_hh_l1": (6, 2)},
     ["rnn.weight_hh_l1", "rnn.weight_hh_l0"]),
    # the reverse direction of layer 0 wider than the forward one
    ({"weight_ih_l0": (4, 3), "weight_hh_l0": (4, 1),
      "weight_ih_l0_reverse": (8, 3), "weight_hh_l0_reverse": (8, 2)},
     ["weight_hh_l0_reverse", "weight_hh_l0"]),
])
def test_torch_npz_whose_layers_differ_in_width_names_the_arrays(tmp_path, shapes, named):
    path = torch_npz(tmp_path / "m.npz", shapes)
    with pytest.raises(ModelError, match="every layer of a PyTorch RNN has the same hidden_size") as info:
        rnnengine.load(path)
    message = str(info.value)
    assert str(path) in message
    for key in named:
        assert repr(key) in message, message


def test_keras_bidirectional_halves_of_different_units_name_the_arrays(tmp_path):
    rng = np.random.default_rng(2)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)
    arrays = {"bi/forward_lstm/lstm_cell/kernel": r(3, 16),
              "bi/forward_lstm/lstm_cell/recurrent_kernel": r(4, 16),
              "bi/backward_lstm/lstm_cell/kernel": r(3, 40),
              "bi/backward_lstm/lstm_cell/recurrent_kernel": r(10, 40)}
    np.savez(tmp_path / "k.npz", **arrays)
    with pytest.raises(ModelError, match="differ in units.*backward_lstm/lstm_cell/recurrent"):
        rnnengine.load(tmp_path / "k.npz")


def test_onnx_chain_of_different_hidden_sizes_loads_the_first_node_alone(tmp_path):
    path = tmp_path / "chain.onnx"
    path.write_bytes(seeds.onnx_chain_seed("LSTM", 4, sizes=(5, 300), seed=3))
    with pytest.warns(UserWarning, match=r"different hidden sizes \(rnn0 5, rnn1 300\).*'rnn0'"):
        model = rnnengine.load(path)
    assert (model.num_layers, model.hidden_size) == (1, 5)
    # The first node's own output, from the float64 reference on the file's weights.
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    x = np.random.default_rng(4).standard_normal((7, 2, 2)).astype(np.float32)
    y_ref = onnx_rnn("lstm", x, weights["W0"], weights["R0"], weights["B0"])[0][:, 0]
    np.testing.assert_allclose(model.run(x)[0], y_ref, rtol=1e-5, atol=1e-5)
    second = rnnengine.load(path, node="rnn1")
    assert (second.num_layers, second.input_size, second.hidden_size) == (1, 5, 300)


@pytest.mark.parametrize("sizes", [(5, 300), (300, 5), (4, 4, 9)])
def test_onnx_chains_of_mixed_sizes_run_every_way(tmp_path, sizes):
    path = tmp_path / "chain.onnx"
    path.write_bytes(seeds.onnx_chain_seed("GRU", 3, sizes=sizes))
    done = run_isolated(f"""
        import warnings
        import numpy as np
        import rnnengine
        warnings.simplefilter("ignore")
        for node in (None, "rnn1"):
            model = rnnengine.load({str(path)!r}, node=node)
            x = np.ones((5, 2, model.input_size), np.float32)
            model.run(x)
            model.stream(2).run(x)
            pool = model.pool(2)
            pool.step([pool.open()], x[0, :1])
            print(model.num_layers, model.hidden_size)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", str(sizes[0]),
                                   str(len(sizes) - 1 if len(set(sizes[1:])) == 1 else 1),
                                   str(sizes[1])]


# -- cycles -------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [(3, 3), (4, 4, 4)])
@pytest.mark.parametrize("node", [None, "rnn0", "rnn1"])
def test_cycle_of_recurrent_nodes_is_a_model_error(tmp_path, sizes, node):
    path = tmp_path / "cycle.onnx"
    path.write_bytes(seeds.onnx_chain_seed("LSTM", 4, sizes=sizes, cycle=True))
    with pytest.raises(ModelError, match="feed each other in a cycle") as info:
        rnnengine.load(path, node=node)
    assert str(path) in str(info.value)


def test_chain_without_cycle_still_loads_as_a_stack(tmp_path):
    path = tmp_path / "chain.onnx"
    path.write_bytes(seeds.onnx_chain_seed("LSTM", 4, sizes=(3, 3, 3)))
    assert rnnengine.load(path).num_layers == 3


# -- the kernel entry points check what they are given ----------------------------------

ENTRY_POINTS = """
    import numpy as np
    from rnnengine import Layer, Model
    from rnnengine.core import kernels as _kernels
    from rnnengine.core.packing import pack_layer
    rng = np.random.default_rng(0)
    def layer(I, H):
        return Layer.from_onnx("lstm", rng.standard_normal((1, 4 * H, I), np.float32),
                               rng.standard_normal((1, 4 * H, H), np.float32))
    model = Model([layer(3, 4), layer(4, 4)])
    x = np.ones((5, 2, 3), np.float32)
    good = dict(h=np.zeros((2, 2, 4), np.float32), c=np.zeros((2, 2, 4), np.float32),
                y=np.zeros((5, 2, 4), np.float32))
    cases = {{
        "h too small": dict(good, h=np.zeros((2, 2, 2), np.float32)),
        "h for one layer": dict(good, h=np.zeros((1, 2, 4), np.float32)),
        "c missing": dict(good, c=None),
        "c too small": dict(good, c=np.zeros((2, 1, 4), np.float32)),
        "y too narrow": dict(good, y=np.zeros((5, 2, 1), np.float32)),
        "y too short": dict(good, y=np.zeros((2, 2, 4), np.float32)),
    }}
    for name, bufs in cases.items():
        try:
            _kernels.run_stack(model.cells, 1, x, None, bufs["h"], bufs["c"], bufs["y"])
        except ValueError as e:
            print(name, "ValueError")
    for name, x_bad in {{"x too narrow": np.ones((5, 2, 2), np.float32)}}.items():
        try:
            _kernels.run_stack(model.cells, 1, x_bad, None, good["h"], good["c"], good["y"])
        except ValueError:
            print(name, "ValueError")
    try:
        _kernels.run_stack(model.cells, 1, x, np.zeros(1, np.int32), **good)
    except ValueError:
        print("short lengths ValueError")
    mixed = pack_layer(layer(3, 2)) + pack_layer(layer(2, 300))
    try:
        _kernels.run_stack(mixed, 1, x, None, np.zeros((2, 2, 300), np.float32),
                           np.zeros((2, 2, 300), np.float32), np.zeros((5, 2, 300), np.float32))
    except ValueError:
        print("mixed stack ValueError")
    for cells in ([], mixed, [None], ["cell"]):
        try:
            _kernels.StreamCore(cells, 1, 1)
        except (ValueError, TypeError) as e:
            print("stream", type(e).__name__)
    core = _kernels.StreamCore.__new__(_kernels.StreamCore)   # never initialised
    for call in (lambda: core.step(np.zeros(3, np.float32)), lambda: core._lock(),
                 lambda: core._run(x, np.zeros((5, 2, 4), np.float32))):
        try:
            call()
        except (ValueError, RuntimeError) as e:
            print("uninitialised", type(e).__name__)
"""


def test_kernel_entry_points_refuse_buffers_that_do_not_fit():
    done = run_isolated(ENTRY_POINTS.format())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "h too small ValueError", "h for one layer ValueError", "c missing ValueError",
        "c too small ValueError", "y too narrow ValueError", "y too short ValueError",
        "x too narrow ValueError", "short lengths ValueError", "mixed stack ValueError",
        "stream ValueError", "stream ValueError", "stream TypeError", "stream TypeError",
        "uninitialised ValueError", "uninitialised RuntimeError", "uninitialised RuntimeError"]


# -- files that are not regular files -------------------------------------------------------

LOAD = """
    import rnnengine
    try:
        rnnengine.load({path!r})
    except rnnengine.ModelError as e:
        print("ModelError:", e)
"""


def load_isolated(path) -> str:
    """The outcome of rnnengine.load(path) in a subprocess; a hang fails after 60 s."""
    done = run_isolated(LOAD.format(path=str(path)), timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.parametrize("name", ["model.onnx", "model.npz", "model"])
def test_model_path_that_is_a_fifo_is_refused(tmp_path, name):
    path = tmp_path / name
    os.mkfifo(path)
    out = load_isolated(path)
    assert out.startswith(f"ModelError: {path}: the model file is a FIFO"), out


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null"])
def test_model_path_linked_to_a_device_is_refused(tmp_path, target):
    path = tmp_path / "model.onnx"
    os.symlink(target, path)
    out = load_isolated(path)
    assert out.startswith(f"ModelError: {path}: the model file is a character device"), out


def test_model_path_that_is_a_directory_is_refused(tmp_path):
    out = load_isolated(tmp_path)
    assert out.startswith(f"ModelError: {tmp_path}: the model file is a directory"), out


def with_external_weights(path, location: str):
    """The LSTM seed with W (1, 12, 2) kept in the external file ``location``."""
    model = onnx.ModelProto()
    model.ParseFromString(seeds.onnx_seed("LSTM", 4))
    W = next(t for t in model.graph.initializer if t.name == "W")
    W.ClearField("raw_data")
    W.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "96")):
        W.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_in_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "w.bin")
    out = load_isolated(with_external_weights(tmp_path / "m.onnx", "w.bin"))
    assert "ModelError:" in out and "external data of tensor 'W' is a FIFO" in out, out
    assert str(tmp_path / "w.bin") in out


def test_external_data_shorter_than_its_tensor_is_refused_before_reading(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 40)
    out = load_isolated(with_external_weights(tmp_path / "m.onnx", "w.bin"))
    assert "external file 'w.bin' holds 40 bytes; shape [1, 12, 2] needs 96" in out, out


def test_external_data_in_a_regular_file_still_loads(tmp_path):
    model = onnx.ModelProto()
    model.ParseFromString(seeds.onnx_seed("LSTM", 4))
    W = next(t for t in model.graph.initializer if t.name == "W")
    (tmp_path / "w.bin").write_bytes(W.raw_data)
    with_external_weights(tmp_path / "m.onnx", "w.bin")
    model = rnnengine.load(tmp_path / "m.onnx")
    assert (model.input_size, model.hidden_size) == (2, 3)


# -- a broadcast input is refused before it is copied --------------------------------------

BROADCAST = """
    import os, resource
    import numpy as np
    from rnnengine import Layer, Model
    # 2 GiB of address space: materialising any of the inputs below needs several GiB.
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    I, H = 200, 64
    rng = np.random.default_rng(0)
    model = Model([Layer.from_onnx("lstm", rng.standard_normal((1, 4 * H, I), np.float32),
                                   rng.standard_normal((1, 4 * H, H), np.float32))])
    rows = 2**31 // (4 * H) + 1          # x itself (rows * I < 2**31 elements) passes
    one = np.float32(1)
    pool = model.pool(2)
    calls = {
        "run": lambda: model.run(np.broadcast_to(one, (rows, 1, I))),
        "run unbatched": lambda: model.run(np.broadcast_to(one, (rows, I))),
        "stream": lambda: model.stream().run(np.broadcast_to(one, (rows, 1, I))),
        "pool": lambda: pool.step([pool.open()], np.broadcast_to(one, (rows, I))),
        "state": lambda: model.run(np.zeros((2, 1, I), np.float32),
                                   (np.broadcast_to(one, (rows, 1, H)),) * 2),
    }
    for name, call in calls.items():
        try:
            call()
        except ValueError as e:
            print(name, "ValueError")
        except MemoryError:
            print(name, "MemoryError")
"""


def test_broadcast_input_is_refused_before_it_is_copied():
    done = run_isolated(BROADCAST)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "run ValueError", "run unbatched ValueError", "stream ValueError", "pool ValueError",
        "state ValueError"]
