"""The ``rnnengine`` console command, driven in a subprocess as a user would run it.

Numbers the command writes are checked against PyTorch (the models are built and exported
here), never against rnnengine itself. When the package is installed (CI: ``bash .ci/run``)
the console script next to the interpreter is what runs; in a source checkout with
``PYTHONPATH=src`` the same ``main`` runs through ``python -m rnnengine``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import conftest

torch = pytest.importorskip("torch")

ROOT = Path(conftest.ROOT)
SILERO = ROOT / "tests" / "data" / "silero_vad_16k_op15.onnx"


def console_command() -> list:
    script = Path(sys.executable).with_name("rnnengine")
    if script.exists() and installed():
        return [str(script)]
    return [sys.executable, "-m", "rnnengine"]


def installed() -> bool:
    try:
        metadata.distribution("rnnengine")
    except metadata.PackageNotFoundError:
        return False
    return True


def cli(*args, stderr=subprocess.PIPE, check=None, timeout=300):
    """Run the command; returns CompletedProcess with text stdout/stderr."""
    env = dict(os.environ)
    env.pop("RNNENGINE_TRACEBACK", None)
    proc = subprocess.run(console_command() + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=stderr, text=True, env=env, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def one_error_line(proc, *fragments):
    """A failure is one line on stderr, non-zero status, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("rnnengine "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- models built here, with PyTorch as the reference ---------------------------------------

class Tagger(torch.nn.Module):
    """A 2-layer LSTM with a linear head: what a user exports from PyTorch."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.LSTM(8, 16, num_layers=2)
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x):
        y, _ = self.enc(x)
        return self.fc(y)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_models")
    torch.manual_seed(0)
    tagger = Tagger().eval()
    state_dict = {k: v.detach().numpy() for k, v in tagger.state_dict().items()}
    np.savez(d / "tagger.npz", **state_dict)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tagger, (torch.randn(5, 1, 8),), str(d / "tagger.onnx"), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "T", 1: "N"}})
    gru = torch.nn.GRU(6, 10, bidirectional=True).eval()
    np.savez(d / "gru_bi.npz", **{"net.rnn." + k: v.detach().numpy()
                                  for k, v in gru.state_dict().items()})
    (d / "corrupt.onnx").write_bytes(b"\x08\x07this is not protobuf" * 20)
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04 truncated zip")
    x = np.random.default_rng(1).standard_normal((7, 3, 8)).astype(np.float32)
    np.save(d / "x.npy", x)
    return {"dir": d, "tagger": tagger, "gru": gru, "x": x}


def torch_lstm(module, x, lengths=None):
    """Reference y (T, N, H) and final (h, c) from PyTorch; with lengths, each batch entry
    runs alone on its valid steps and the rest of y is zero."""
    with torch.no_grad():
        if lengths is None:
            y, (h, c) = module(torch.from_numpy(x))
            return y.numpy(), h.numpy(), c.numpy()
        T, N, _ = x.shape
        y = np.zeros((T, N, module.hidden_size), np.float32)
        hs, cs = [], []
        for n, length in enumerate(lengths):
            yn, (hn, cn) = module(torch.from_numpy(x[:length, n:n + 1]))
            y[:length, n] = yn.numpy()[:, 0]
            hs.append(hn.numpy())
            cs.append(cn.numpy())
        return y, np.concatenate(hs, axis=1), np.concatenate(cs, axis=1)


# --- the command itself ---------------------------------------------------------------------

def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^rnnengine = "rnnengine\.cli:main"$', text, re.M)
    if installed():
        points = [e for e in metadata.distribution("rnnengine").entry_points
                  if e.group == "console_scripts" and e.name == "rnnengine"]
        assert points and points[0].value == "rnnengine.cli:main"
        assert shutil.which("rnnengine") or Path(sys.executable).with_name("rnnengine").exists()


def test_help_lists_every_subcommand():
    out = cli("--help", check=0).stdout
    for name in ("info", "run", "convert", "bench", "verify", "demo"):
        assert name in out


def test_no_subcommand_is_a_usage_error():
    proc = cli()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_info_onnx(models):
    out = cli("info", models["dir"] / "tagger.onnx", check=0).stdout
    fields = dict(re.findall(r"^(\w[\w ]*?)\s{2,}(.*)$", out, re.M))
    assert fields["kind"] == "LSTM"
    assert fields["layers"] == "2"
    assert fields["directions"] == "forward"
    assert fields["input_size"] == "8" and fields["hidden_size"] == "16"
    lstm_params = sum(p.numel() for p in models["tagger"].enc.parameters())
    assert fields["parameters"] == f"{lstm_params:,}"
    # both exported nodes are found and named
    assert "LSTM /enc/LSTM " in out and "LSTM /enc/LSTM_1 " in out


def test_info_npz_bidirectional(models):
    out = cli("info", models["dir"] / "gru_bi.npz", check=0).stdout
    assert re.search(r"^kind\s+GRU$", out, re.M)
    assert re.search(r"^directions\s+bidirectional$", out, re.M)
    assert re.search(r"^output y\s+\(T, N, 20\)$", out, re.M)
    assert re.search(r"^streaming\s+no", out, re.M)


def test_info_several_nodes_lists_them_and_exits_0():
    """Listing is what info is for: exit 0, one naming (the loader's), each name usable with
    --node, and which If branch is which when the condition comes from a graph input."""
    proc = cli("info", SILERO, check=0)
    assert proc.stderr == "" and "--node NAME" in proc.stdout
    names = re.findall(r"^  LSTM (\S+)", proc.stdout, re.M)
    assert names == ["/model/decoder/If_1::then_branch::/model/decoder/rnn/LSTM",
                     "/model/decoder/If_1::else_branch::/model/decoder/rnn_1/LSTM"], proc.stdout
    assert ("If '/model/decoder/If_1': then_branch runs when bool(shape(state)[0]) is true, "
            "else_branch otherwise") in proc.stdout
    for name in names:
        out = cli("info", SILERO, "--node", name, check=0).stdout
        assert re.search(r"^hidden_size\s+128$", out, re.M)
    out = cli("info", SILERO, "--node", "/model/decoder/rnn/LSTM", check=0).stdout
    assert re.search(r"^hidden_size\s+128$", out, re.M)   # the short name still works


def test_info_says_node_loads_a_chain(models):
    """--node on the first node of an exporter's chain loads the layers after it too."""
    out = cli("info", models["dir"] / "tagger.onnx", check=0).stdout
    assert re.search(r"^layers\s+2$", out, re.M)
    head = re.search(r"LSTM (\S+)\s+chain of 2 layers: --node loads the 1 after it too "
                     r"\(--no-chain, or load\(\.\.\., chain=False\), loads it alone\)", out)
    assert head, out
    assert "a later layer of the chain from " + head.group(1) in out
    alone = cli("info", models["dir"] / "tagger.onnx", "--node", head.group(1), "--no-chain",
                check=0).stdout
    assert re.search(r"^layers\s+1$", alone, re.M)


def test_verify_runs_the_files_own_nodes_of_a_streaming_model():
    """Silero VAD: the LSTMs sit in If branches, their initial state comes from the graph
    input 'state' and their weights from constant chains inside the branches."""
    pytest.importorskip("onnxruntime")
    for name in ("/model/decoder/If_1::then_branch::/model/decoder/rnn/LSTM",
                 "/model/decoder/If_1::else_branch::/model/decoder/rnn_1/LSTM"):
        out = cli("verify", SILERO, "--node", name, "--seq-len", "6", check=0).stdout
        row = next(line for line in out.splitlines() if "from the file" in line)
        assert name in row and "not compared" not in row, out
        assert len(re.findall(r"\d\.\d\de-\d\d", row)) == 2, row


@pytest.mark.parametrize("fmt", ["onnx", "npz"])
def test_run_matches_pytorch(models, tmp_path, fmt):
    d = models["dir"]
    y_path, state_path = tmp_path / "y.npy", tmp_path / "state.npz"
    cli("run", d / f"tagger.{fmt}", "--input", d / "x.npy", "--output", y_path,
        "--state", state_path, "--recurrent-only", check=0)
    y_ref, h_ref, c_ref = torch_lstm(models["tagger"].enc, models["x"])
    np.testing.assert_allclose(np.load(y_path), y_ref, rtol=1e-5, atol=1e-5)
    with np.load(state_path) as state:
        np.testing.assert_allclose(state["h"], h_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state["c"], c_ref, rtol=1e-5, atol=1e-5)


def test_run_lengths_and_batch_first(models, tmp_path):
    d, x = models["dir"], models["x"]
    lengths = [7, 2, 5]
    y_ref, h_ref, _ = torch_lstm(models["tagger"].enc, x, lengths)
    cli("run", d / "tagger.onnx", "-i", d / "x.npy", "-o", tmp_path / "y.npy",
        "--lengths", "7,2,5", "--state", tmp_path / "s.npz", "--recurrent-only", check=0)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), y_ref, rtol=1e-5, atol=1e-5)
    with np.load(tmp_path / "s.npz") as state:
        np.testing.assert_allclose(state["h"], h_ref, rtol=1e-5, atol=1e-5)
    # the same lengths from a .npy file, and x given batch-first (N, T, I) -> y (N, T, H)
    np.save(tmp_path / "xb.npy", np.ascontiguousarray(x.transpose(1, 0, 2)))
    np.save(tmp_path / "len.npy", np.array(lengths))
    cli("run", d / "tagger.npz", "-i", tmp_path / "xb.npy", "-o", tmp_path / "yb.npy",
        "--lengths", tmp_path / "len.npy", "--batch-first", check=0)
    np.testing.assert_allclose(np.load(tmp_path / "yb.npy"), y_ref.transpose(1, 0, 2),
                               rtol=1e-5, atol=1e-5)


def test_run_reads_an_initial_state(models, tmp_path):
    """A stream in two pieces: the second run starts from the first one's --state, and both
    equal PyTorch running the whole sequence."""
    d, x = models["dir"], models["x"]
    np.save(tmp_path / "x1.npy", x[:4])
    np.save(tmp_path / "x2.npy", x[4:])
    cli("run", d / "tagger.npz", "-i", tmp_path / "x1.npy", "-o", tmp_path / "y1.npy",
        "--state", tmp_path / "s1.npz", check=0)
    cli("run", d / "tagger.npz", "-i", tmp_path / "x2.npy", "-o", tmp_path / "y2.npy",
        "--initial-state", tmp_path / "s1.npz", "--state", tmp_path / "s2.npz", check=0)
    y_ref, h_ref, c_ref = torch_lstm(models["tagger"].enc, x)
    np.testing.assert_allclose(np.load(tmp_path / "y2.npy"), y_ref[4:], rtol=1e-5, atol=1e-5)
    with np.load(tmp_path / "s2.npz") as s:
        np.testing.assert_allclose(s["h"], h_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s["c"], c_ref, rtol=1e-5, atol=1e-5)
    np.savez(tmp_path / "bad.npz", h=np.zeros((2, 3, 16), np.float32))
    proc = cli("run", d / "tagger.npz", "-i", tmp_path / "x2.npy", "-o", tmp_path / "y3.npy",
               "--initial-state", tmp_path / "bad.npz")
    one_error_line(proc, "['c'] missing")


def test_run_bad_input_is_one_line(models, tmp_path):
    d = models["dir"]
    np.save(tmp_path / "wrong.npy", np.zeros((4, 2, 5), np.float32))
    proc = cli("run", d / "tagger.onnx", "-i", tmp_path / "wrong.npy", "-o", tmp_path / "y.npy",
               "--recurrent-only")
    one_error_line(proc, "(T, N, 8)", "(4, 2, 5)")
    proc = cli("run", d / "tagger.onnx", "-i", tmp_path / "wrong.npy", "-o", tmp_path / "y.npy")
    one_error_line(proc, "'x'", "(4, 2, 5)")     # the whole graph names its input
    proc = cli("run", d / "tagger.onnx", "-i", d / "x.npy", "-o", tmp_path / "y.npy",
               "--lengths", "7,9,1", "--recurrent-only")
    one_error_line(proc, "lengths")
    proc = cli("run", d / "tagger.onnx", "-i", tmp_path / "nothere.npy", "-o", tmp_path / "y.npy")
    one_error_line(proc, "nothere.npy")
    assert not (tmp_path / "y.npy").exists()


def test_convert_to_own_format(models, tmp_path):
    d = models["dir"]
    out = tmp_path / "own.npz"
    line = cli("convert", d / "tagger.onnx", out, check=0).stdout
    assert "LSTM, 2 layers" in line and out.exists()
    with np.load(out, allow_pickle=False) as archive:   # the engine's format, not PyTorch's
        assert not any(k.startswith("enc.") for k in archive.files)
    cli("run", out, "-i", d / "x.npy", "-o", tmp_path / "y.npy", check=0)
    y_ref, _, _ = torch_lstm(models["tagger"].enc, models["x"])
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision, budget", [("fp16", 5e-3), ("int8", 6e-2)])
def test_precision_through_convert_run_and_verify(models, tmp_path, precision, budget):
    d = models["dir"]
    out = tmp_path / f"{precision}.npz"
    cli("convert", d / "tagger.onnx", out, "--precision", precision, check=0)
    with np.load(out, allow_pickle=False) as archive:   # the reduced weights are stored
        assert json.loads(archive["__rnnengine__"].tobytes())["precision"] == precision
    cli("run", out, "-i", d / "x.npy", "-o", tmp_path / "y.npy", check=0)
    y_ref, _, _ = torch_lstm(models["tagger"].enc, models["x"])
    err = np.abs(np.load(tmp_path / "y.npy") - y_ref).max()
    assert 1e-7 < err <= budget      # reduced, and within the mode's budget
    report = cli("verify", d / "tagger.onnx", "--recurrent-only", "--precision", precision,
                 check=0).stdout
    assert f"tolerance {budget:g}" in report


def test_bench_side_by_side(models):
    pytest.importorskip("onnxruntime")
    out = cli("bench", models["dir"] / "tagger.onnx", "--steps", "40", "--repeat", "1",
              "--seq-len", "10", "--batch", "2", "--recurrent-only", check=0).stdout
    header = next(line for line in out.splitlines() if line.startswith("workload"))
    assert "onnxruntime (x)" in header and "torch (x)" in header
    assert "onnxruntime IOBinding (x)" in header   # ORT's best streaming case
    rows = [line for line in out.splitlines()
            if line.startswith(("stream step", "sequence T=10"))]
    assert len(rows) == 3, out
    for row in rows:  # our time, our throughput, then each reference with its ratio
        assert re.search(r"\d+(\.\d+)? (us|ms|s) ", row)
        ratios = len(re.findall(r"\(\d+\.\d\dx\)", row))
        assert ratios == (3 if row.startswith("stream step") else 2), row


def test_bench_bidirectional_has_no_streaming_row(models):
    out = cli("bench", models["dir"] / "gru_bi.npz", "--steps", "20", "--repeat", "1",
              "--seq-len", "5", "--batch", "2", "--no-compare", check=0).stdout
    assert "streaming: skipped" in out
    assert "sequence T=5, batch 2" in out and "stream step" not in out.split("streaming:")[0]


def test_verify_against_the_file_and_pytorch(models):
    pytest.importorskip("onnxruntime")
    out = cli("verify", models["dir"] / "tagger.onnx", check=0).stdout
    # the file's own two nodes run in onnxruntime, independent of rnnengine's loader
    row = next(line for line in out.splitlines() if "from the file" in line)
    diffs = [float(v) for v in re.findall(r"\d\.\d\de[-+]\d\d", row)]
    assert len(diffs) == 2 and max(diffs) < 1e-5
    assert re.search(r"^torch, weights as loaded\s+\d", out, re.M)
    assert re.search(r"^largest difference \S+: within tolerance", out, re.M)


def test_verify_npz_reads_state_dict_with_pytorch(models):
    out = cli("verify", models["dir"] / "gru_bi.npz", check=0).stdout
    assert re.search(r"^torch, state_dict read by PyTorch from the file\s+\d\.\d\de-\d\d", out, re.M)


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_verify_and_run_other_state_dict_files(models, tmp_path, suffix):
    """.safetensors (written by safetensors.torch) and .pt (torch.save) state_dicts: run
    matches PyTorch, verify reads the file with PyTorch's own tools."""
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / f"tagger.{suffix}"
    state_dict = models["tagger"].state_dict()
    st.save_file(state_dict, str(path)) if suffix == "safetensors" else torch.save(state_dict, path)
    cli("run", path, "-i", models["dir"] / "x.npy", "-o", tmp_path / "y.npy", check=0)
    y_ref, _, _ = torch_lstm(models["tagger"].enc, models["x"])
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), y_ref, rtol=1e-5, atol=1e-5)
    out = cli("verify", path, check=0).stdout
    assert re.search(r"^torch, state_dict read by PyTorch from the file\s+\d\.\d\de-\d\d", out, re.M)


def test_verify_reports_a_difference_beyond_tolerance(models):
    proc = cli("verify", models["dir"] / "tagger.npz", "--tol", "1e-12")
    one_error_line(proc, "exceeds tolerance")


# --- errors: one line, non-zero, for every subcommand ---------------------------------------

SUBCOMMANDS = {
    "info": [],
    "run": ["--input", "{dir}/x.npy", "--output", "{dir}/never.npy"],
    "convert": ["{dir}/never.npz"],
    "bench": ["--steps", "5", "--repeat", "1"],
    "verify": [],
}


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
@pytest.mark.parametrize("bad", ["missing.onnx", "corrupt.onnx", "corrupt.npz"])
def test_bad_model_file_is_one_line(models, command, bad):
    d = models["dir"]
    extra = [a.format(dir=d) for a in SUBCOMMANDS[command]]
    proc = cli(command, d / bad, *extra)
    line = one_error_line(proc, bad)
    assert proc.stdout == ""
    assert ("no such file" in line) if bad.startswith("missing") else ("no such file" not in line)
    assert not (d / "never.npy").exists() and not (d / "never.npz").exists()


# --- demo -----------------------------------------------------------------------------------

def shipped_demo():
    """The shipped weights and vocabulary, read here with NumPy and PyTorch."""
    data = ROOT / "src" / "rnnengine" / "data"
    if not data.exists():
        import rnnengine
        data = Path(rnnengine.__file__).parent / "data"
    vocab = json.loads((data / "char_lstm_vocab.json").read_text())
    with np.load(data / "char_lstm.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return data, vocab, arrays


def test_demo_files_are_small_and_in_pytorch_naming():
    data, vocab, arrays = shipped_demo()
    size = sum(f.stat().st_size for f in data.iterdir() if f.is_file())
    assert size < 1.5e6
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight", "head.bias"} <= set(arrays)
    assert arrays["head.weight"].shape == (len(vocab["chars"]), vocab["hidden_size"])


def test_demo_streams_what_pytorch_would_write():
    """Greedy decoding (temperature 0) is deterministic: the text the command prints must be
    the text PyTorch's own nn.LSTM produces from the same state_dict and output layer."""
    _, vocab, arrays = shipped_demo()
    chars = vocab["chars"]
    prompt, n = "Return the ", 60
    out = cli("demo", "--prompt", prompt, "--length", n, "--temperature", "0", check=0).stdout

    lstm = torch.nn.LSTM(len(chars), vocab["hidden_size"], num_layers=vocab["num_layers"])
    lstm.load_state_dict({k[len("lstm."):]: torch.from_numpy(v) for k, v in arrays.items()
                          if k.startswith("lstm.")})
    head_w, head_b = torch.from_numpy(arrays["head.weight"]), torch.from_numpy(arrays["head.bias"])
    eye = torch.eye(len(chars))
    text, state = "", None
    with torch.no_grad():
        y, state = lstm(eye[[chars.index(c) for c in prompt]][:, None], state)
        for _ in range(n):
            nxt = int(torch.argmax(head_w @ y[-1, 0] + head_b))
            text += chars[nxt]
            y, state = lstm(eye[[nxt]][:, None], state)
    assert prompt + text in out
    latency = re.search(r"(\d+) steps .* median ([\d.]+) us, p99 ([\d.]+) us", out)
    assert latency and int(latency.group(1)) == len(prompt) + n
    assert float(latency.group(2)) > 0


def test_demo_samples_with_a_seed():
    a = cli("demo", "--length", "40", "--seed", "7", check=0).stdout
    b = cli("demo", "--length", "40", "--seed", "7", check=0).stdout
    c = cli("demo", "--length", "40", "--seed", "8", check=0).stdout
    text = lambda out: out.rsplit("\n", 2)[0]   # noqa: E731  (all but the latency line)
    assert text(a) == text(b) and text(a) != text(c)
    proc = cli("demo", "--prompt", "\u00e9t\u00e9")
    one_error_line(proc, "--prompt")


# --- what the command imports and draws -----------------------------------------------------

def test_light_subcommands_do_not_import_torch_or_onnxruntime(models, tmp_path):
    d = models["dir"]
    code = (
        "import sys\n"
        "from rnnengine.cli import main\n"
        f"assert main(['info', {str(d / 'tagger.npz')!r}]) == 0\n"
        f"assert main(['run', {str(d / 'tagger.onnx')!r}, '-i', {str(d / 'x.npy')!r}, "
        f"'-o', {str(tmp_path / 'y.npy')!r}]) == 0\n"
        f"assert main(['convert', {str(d / 'tagger.onnx')!r}, {str(tmp_path / 'o.npz')!r}]) == 0\n"
        "assert main(['demo', '--length', '5']) == 0\n"
        "print('heavy:', sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    assert "heavy: []" in out


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_bar_only_on_a_terminal(models):
    import pty  # noqa: F401  (POSIX only)

    args = ("bench", models["dir"] / "tagger.npz", "--steps", "10", "--repeat", "2",
            "--seq-len", "5", "--no-compare")
    master, slave = os.openpty()
    try:
        proc = cli(*args, stderr=slave, check=0)
        os.close(slave)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert b"\rbench [" in drawn and b"6/6" in drawn
    assert "workload" in proc.stdout
    piped = cli(*args, check=0)
    assert piped.stderr == ""


def test_commands_never_flip_a_loaded_models_layout(tmp_path, monkeypatch):
    """bench and verify work time-major: they ask the loader for that layout instead of
    setting batch_first on a Model that could be shared (a Keras file implies batch_first)."""
    from rnnengine.cli import _common, main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "keras.npz", **{
        "lstm/lstm_cell/kernel": rng.standard_normal((3, 16)).astype(np.float32),
        "lstm/lstm_cell/recurrent_kernel": rng.standard_normal((4, 16)).astype(np.float32),
        "lstm/lstm_cell/bias": rng.standard_normal(16).astype(np.float32)})
    loaded = []
    real_load = _common.load

    def recording_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        loaded.append((model, model.batch_first))
        return model

    monkeypatch.setattr(_common, "load", recording_load)
    assert main(["bench", str(tmp_path / "keras.npz"), "--no-compare", "--steps", "5",
                 "--repeat", "1", "--seq-len", "3", "--batch", "2"]) == 0
    assert main(["verify", str(tmp_path / "keras.npz"), "--seq-len", "3"]) == 0
    assert main(["info", str(tmp_path / "keras.npz")]) == 0
    assert len(loaded) == 3 and loaded[-1][1] is True   # info: the file's own layout
    assert all(model.batch_first == layout for model, layout in loaded)
