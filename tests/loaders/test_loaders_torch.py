"""rnnengine.from_torch and load() of .safetensors / .pt against PyTorch's own outputs.

Every numeric check runs the torch module itself on the same input and initial state; the
engine never checks itself."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

import rnnengine  # noqa: E402
from rnnengine import ModelError  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*oneDNN", category=UserWarning)
RTOL, ATOL = 1e-5, 1e-6
CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
CELLS = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}


def random_config(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    kind = ("lstm", "gru", "rnn")[seed % 3]
    H = int(rng.integers(1, 20))
    cfg = dict(kind=kind, input_size=int(rng.integers(1, 12)), hidden_size=H,
               num_layers=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
               bias=bool(rng.integers(4)), batch_first=bool(rng.integers(2)))
    if kind == "lstm" and H > 1 and rng.integers(2):
        cfg["proj_size"] = int(rng.integers(1, H))
    if kind == "rnn":
        cfg["nonlinearity"] = ("tanh", "relu")[int(rng.integers(2))]
    return cfg


def make_module(cfg: dict, seed: int):
    torch.manual_seed(seed)
    options = {k: v for k, v in cfg.items() if k != "kind"}
    return CLASSES[cfg["kind"]](**options).eval()


def initial_state(cfg: dict, N: int, rng):
    D = 2 if cfg["bidirectional"] else 1
    Hout = cfg.get("proj_size") or cfg["hidden_size"]
    h = rng.standard_normal((cfg["num_layers"] * D, N, Hout)).astype(np.float32) * 0.5
    if cfg["kind"] != "lstm":
        return h
    return h, rng.standard_normal((cfg["num_layers"] * D, N, cfg["hidden_size"])).astype(np.float32) * 0.5


def torch_outputs(module, x, state):
    with torch.no_grad():
        s = tuple(torch.from_numpy(a) for a in state) if isinstance(state, tuple) \
            else torch.from_numpy(state)
        y, s = module(torch.from_numpy(x), s)
    return y.numpy(), (tuple(a.numpy() for a in s) if isinstance(s, tuple) else s.numpy())


def assert_same(got, want):
    y, s = got
    y_ref, s_ref = want
    np.testing.assert_allclose(y, y_ref, rtol=RTOL, atol=ATOL)
    for a, b in zip(s if isinstance(s, tuple) else (s,), s_ref if isinstance(s_ref, tuple) else (s_ref,)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def check_against_module(model, module, cfg, seed):
    rng = np.random.default_rng(seed + 100)
    T, N = int(rng.integers(1, 9)), int(rng.integers(1, 5))
    shape = (N, T, cfg["input_size"]) if cfg["batch_first"] else (T, N, cfg["input_size"])
    x = rng.standard_normal(shape).astype(np.float32)
    state = initial_state(cfg, N, rng)
    assert model.batch_first == cfg["batch_first"]
    assert_same(model.run(x, state), torch_outputs(module, x, state))


@pytest.mark.parametrize("seed", range(30))
def test_from_torch_random_configurations(seed):
    cfg = random_config(seed)
    module = make_module(cfg, seed)
    check_against_module(rnnengine.from_torch(module), module, cfg, seed)


@pytest.mark.parametrize("seed", range(12))
def test_safetensors_from_a_wrapping_module(tmp_path, seed):
    """safetensors.torch.save_file of a model's state_dict: the recurrent names sit under the
    wrapper's prefix; what the file does not record (batch_first, nonlinearity) is passed."""
    cfg = random_config(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(3, cfg["input_size"])
            self.encoder = torch.nn.Sequential(make_module(cfg, seed))

    net = Net()
    path = tmp_path / "net.safetensors"
    safetensors_torch.save_file(net.state_dict(), str(path))
    options = {"batch_first": cfg["batch_first"]}
    if cfg["kind"] == "rnn":
        options["nonlinearity"] = cfg["nonlinearity"]
    model = rnnengine.load(path, **options)
    check_against_module(model, net.encoder[0], cfg, seed)


@pytest.mark.parametrize("seed", range(3))
def test_pt_state_dict(tmp_path, seed):
    cfg = random_config(seed)
    module = make_module(cfg, seed)
    path = tmp_path / "rnn.pt"
    torch.save({"model": module.state_dict()}, path)   # nested, as training scripts save
    options = {"batch_first": cfg["batch_first"]}
    if cfg["kind"] == "rnn":
        options["nonlinearity"] = cfg["nonlinearity"]
    check_against_module(rnnengine.load(path, **options), module, cfg, seed)


def test_pt_with_code_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.LSTM(2, 3), path)   # a whole pickled module, not a state_dict
    with pytest.raises(ModelError, match="weights_only"):
        rnnengine.load(path)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "rnn_relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_cells(kind, bias):
    torch.manual_seed(1)
    extra = {"nonlinearity": "relu"} if kind == "rnn_relu" else {}
    kind = kind.split("_")[0]
    cell = CELLS[kind](4, 6, bias=bias, **extra).eval()
    model = rnnengine.from_torch(cell)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    h = rng.standard_normal((3, 6)).astype(np.float32)
    c = rng.standard_normal((3, 6)).astype(np.float32)
    # the engine's state has a leading (layers x directions) axis of 1
    state0 = (h[None], c[None]) if kind == "lstm" else h[None]
    stream = model.stream(batch=3)
    stream.state = state0
    ys = []
    with torch.no_grad():
        s = (torch.from_numpy(h), torch.from_numpy(c)) if kind == "lstm" else torch.from_numpy(h)
        for t in range(5):
            s = cell(torch.from_numpy(x[t]), s)
            ys.append((s[0] if kind == "lstm" else s).numpy())
            np.testing.assert_allclose(stream.step(x[t]), ys[-1], rtol=RTOL, atol=ATOL)
    y, _ = model.run(x, state0)
    np.testing.assert_allclose(y, np.stack(ys), rtol=RTOL, atol=ATOL)


def test_container_with_one_recurrent_module_says_which():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GRU(4, 5))
    with pytest.warns(UserWarning, match=r"took GRU '1'"):
        model = rnnengine.from_torch(net)
    assert model.kind == "gru"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rnnengine.from_torch(net, node="1").kind == "gru"


def test_container_with_several_recurrent_modules_lists_them():
    net = torch.nn.ModuleDict({"enc": torch.nn.LSTM(3, 4), "dec": torch.nn.GRUCell(4, 4)})
    with pytest.raises(ValueError, match=r"2 recurrent modules: enc \(LSTM\), dec \(GRUCell\)"):
        rnnengine.from_torch(net)
    assert rnnengine.from_torch(net, node="dec").kind == "gru"
    with pytest.raises(ValueError, match="no recurrent module named 'nope'"):
        rnnengine.from_torch(net, node="nope")


def test_refusals():
    with pytest.raises(ValueError, match="holds no nn.LSTM"):
        rnnengine.from_torch(torch.nn.Linear(2, 3))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        rnnengine.from_torch(np.zeros(3))


def test_float64_module_runs_in_float32():
    torch.manual_seed(3)
    module = torch.nn.LSTM(3, 4).double()
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    with torch.no_grad():
        y_ref = module(torch.from_numpy(x))[0].numpy()
    y, _ = rnnengine.from_torch(module).run(x.astype(np.float32))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_cells_through_safetensors(tmp_path, kind):
    """A cell's state_dict (weight_ih, ... without _l0) under a wrapper's prefix."""
    torch.manual_seed(4)
    extra = {"nonlinearity": "relu"} if kind == "rnn_relu" else {}
    kind = kind.split("_")[0]
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), CELLS[kind](4, 5, **extra))
    safetensors_torch.save_file(net.state_dict(), str(tmp_path / "cell.safetensors"))
    model = rnnengine.load(tmp_path / "cell.safetensors", **extra)
    x = np.random.default_rng(5).standard_normal((6, 2, 4)).astype(np.float32)
    with torch.no_grad():
        s, ys = None, []
        for t in range(6):
            s = net[1](torch.from_numpy(x[t]), s)
            ys.append((s[0] if kind == "lstm" else s).numpy())
    np.testing.assert_allclose(model.run(x)[0], np.stack(ys), rtol=RTOL, atol=ATOL)
