"""``InferenceSession``: a whole exported ONNX model, with ONNX Runtime's surface.

    sess = rnnengine.InferenceSession("model.onnx")       # path, bytes or onnx.ModelProto
    sess.get_inputs(), sess.get_outputs()                  # NodeArg: .name .shape .type
    outs = sess.run(None, {"x": x})                        # list, like onnxruntime
    stream = sess.stream(); pool = sess.pool(64)           # session_stream.py

The graph is planned once at load (``graph.Plan``): constants folded, recurrent nodes on
rnnengine's kernels, the other operators native (``rnnengine.ops``) or through ONNX Runtime.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from ..errors import ModelError
from .executor import Program
from .plan import Loaded, Plan
from ..onnx.rewrite import fuse_unrolled_cells
from ..core.checks import check_threads
from .precision_auto import AUTO, DEFAULT_TOLERANCE, check_request, choose, reported
from ..onnx.fold import Scope
from ..loaders import onnx as onnx_loader
from .model import Model
from .ort_bridge import require_onnxruntime
from .session_stream import SessionPool, SessionStream
from .state_pairs import find_pairs

_SEEN = "seen once"      # a signature's first call runs the general path and is remembered
_MAX_PROGRAMS = 32       # signatures remembered per session (past that, the oldest goes)


def programs_key(feeds, fixed=()) -> Optional[tuple]:
    """What a program is specialised to: each feed's name, shape and dtype, and the value of
    the ``fixed`` ones and of integer scalars (a sample rate, a flag: they decide branches
    and shapes); None when a feed is not an ndarray. Integer arrays (token ids, even one) are
    keyed by shape only: keyed by value, every new token would be a new signature."""
    if feeds.__class__ is not dict:
        return None
    key = []
    for name, value in feeds.items():
        if value.__class__ is not np.ndarray:
            return None
        kept = name in fixed or (value.dtype.kind in "iub" and value.ndim == 0)
        key.append((name, value.shape, value.dtype.str, value.tobytes() if kept else None))
    key.sort()
    return tuple(key)


def recurrent_model(layers, batch_first: bool, precision: str, threads: int = 1) -> Model:
    """THE one place where a session builds the Models of its recurrent nodes, so that
    ``precision=`` (docs/precision.md) and ``threads=`` reach them all."""
    return Model(layers, batch_first=batch_first, precision=precision, threads=threads)


def session_threads(threads, sess_options) -> int:
    """``threads=``, else an ONNX Runtime SessionOptions' ``intra_op_num_threads`` (its 0,
    "ORT picks", is rnnengine's default: 1), else 1."""
    if threads is not None:
        return check_threads(threads)
    wanted = getattr(sess_options, "intra_op_num_threads", 0) if sess_options is not None else 0
    if isinstance(wanted, (int, np.integer)) and not isinstance(wanted, bool) and wanted > 0:
        return int(wanted)
    return 1


class NodeModels:
    """The model factory of one planning of a session: the k-th recurrent node built gets
    ``modes[k]`` (``modes`` one mode for all, or one per node; a file's nodes are built in
    the same order every time it is planned)."""

    def __init__(self, modes, threads: int):
        self.modes = modes
        self.threads = threads
        self.models: List[Model] = []

    def __call__(self, layers, batch_first: bool) -> Model:
        k = len(self.models)
        # nodes past a per-node list are built in fp32; the session then refuses the count
        mode = (self.modes if isinstance(self.modes, str) else
                self.modes[k] if k < len(self.modes) else "fp32")
        self.models.append(recurrent_model(layers, batch_first, mode, self.threads))
        return self.models[-1]


class NodeArg:
    """An input or output of the graph, like ``onnxruntime.NodeArg``: ``name``, ``shape``
    (ints, dim names as str, None when unknown), ``type`` ('tensor(float)', ...)."""

    def __init__(self, info: onnx.ValueInfoProto):
        self.name = info.name
        t = info.type.tensor_type if info.type.HasField("tensor_type") else None
        self.elem_type = t.elem_type if t is not None else 0
        name = onnx.TensorProto.DataType.Name(self.elem_type).lower()
        self.type = f"tensor({name})" if t is not None else "unknown"
        self.dtype = (np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))
                      if self.elem_type not in (0, onnx.TensorProto.STRING) else None)
        if t is not None and t.HasField("shape"):
            self.shape = [d.dim_value if d.HasField("dim_value") else
                          (d.dim_param if d.HasField("dim_param") else None)
                          for d in t.shape.dim]
        else:
            self.shape = None

    def __repr__(self) -> str:
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape})"

    def check(self, value) -> np.ndarray:
        """The fed value as an ndarray; ValueError naming this input if it does not fit."""
        if not isinstance(value, np.ndarray):
            value = np.asarray(value)
        if self.dtype is not None and value.dtype != self.dtype:
            raise ValueError(f"input {self.name!r} must be {self.type} "
                             f"({self.dtype}); got {value.dtype}")
        if self.shape is not None:
            if value.ndim != len(self.shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(self.shape, value.shape)):
                raise ValueError(f"input {self.name!r} must have shape "
                                 f"{_show(self.shape)}; got {value.shape}")
        return value


def _show(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def session_model(source) -> tuple:
    """path, bytes or ModelProto -> (ModelProto, folder of external data, name for errors)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(source))
        except Exception as e:  # google.protobuf DecodeError and friends
            raise ModelError(f"<bytes>: not an ONNX model (protobuf parse failed: {e})") from None
        if not model.HasField("graph"):
            raise ModelError("<bytes>: not an ONNX model (no graph)")
        return model, None, "<bytes>"
    if not isinstance(source, (str, os.PathLike, onnx.ModelProto)):
        raise TypeError("InferenceSession takes a path, the model's bytes or an "
                        f"onnx.ModelProto; got {type(source).__name__}")
    return onnx_loader.read_model(source)


class InferenceSession:
    """A whole ONNX model planned once; ``run`` returns what ONNX Runtime returns.

    threads (or an ONNX Runtime SessionOptions' ``intra_op_num_threads``, passed as
    ``sess_options`` or second, as ORT takes it): the threads each recurrent node's kernels
    split a call's hidden units over, in ``run`` and in streams and pools (1 by default;
    ORT's 0 means 1 here). The other operators run on the calling thread, and the other
    SessionOptions fields (optimization level, execution mode, inter-op threads, ...) have
    no counterpart and are ignored: the plan is always fully optimised and sequential.
    Concurrency across streams comes from calling from several threads (or a Batcher).

    precision: a mode for every recurrent node, one mode per node (in the order the plan
    builds them: ``precision`` reports it that way), or "auto" with ``calibrate`` (one feed
    dict, or a few, as ``run`` takes them): per node, the fastest mode on this CPU whose
    error on the outputs for those feeds stays within ``tolerance`` (precision_auto).

    For the rest of the runtime (streams, pools, the executor, the command line): ``loaded``
    (the parsed model, its recurrent nodes and subgraph plans: ``plan.Loaded``), ``plan`` (the
    main graph's ``plan.Plan``) and ``input_index`` (input name -> position)."""

    def __init__(self, path_or_bytes: Union[str, os.PathLike, bytes, onnx.ModelProto],
                 precision="fp32", sess_options=None, *, threads: Optional[int] = None,
                 calibrate=None, tolerance: float = DEFAULT_TOLERANCE, **_ort_style_options):
        # ORT's providers / provider_options are accepted and ignored, so that code written
        # for onnxruntime.InferenceSession runs unchanged; an ORT SessionOptions (as
        # sess_options, or second, where ORT takes it) gives its intra_op_num_threads.
        if not isinstance(precision, str) and type(precision).__name__ == "SessionOptions":
            precision, sess_options = "fp32", precision
        request = check_request(precision, None, calibrate, tolerance)
        self.threads = session_threads(threads, sess_options)
        model, base_dir, where = session_model(path_or_bytes)
        if request == AUTO:
            request = self._calibrated(model, base_dir, where, calibrate, tolerance)
        self._modes = request
        self._setup(model, base_dir, where, overridable=False)

    @staticmethod
    def _calibrated(model, base_dir, where: str, calibrate, tolerance: float) -> tuple:
        """precision="auto": one mode per recurrent node, chosen on the calibration feeds."""
        feeds = [calibrate] if isinstance(calibrate, dict) else list(calibrate)

        def planned(modes) -> "InferenceSession":
            sess = InferenceSession.__new__(InferenceSession)
            sess._modes, sess.threads = modes, 1
            sess._setup(model, base_dir, where, overridable=False)
            return sess

        nodes = planned("fp32")._node_models.models
        return choose([m.layers[0] for m in nodes],
                      lambda modes: [y for f in feeds for y in planned(modes).run(None, f)],
                      tolerance)

    def _setup(self, model: onnx.ModelProto, base_dir, where: str, overridable: bool) -> None:
        """Plan ``model``. With ``overridable``, the initializers that are also graph inputs
        are inputs too (defaulting to their initializer) instead of constants."""
        self._where = where
        try:
            model = fuse_unrolled_cells(model, base_dir)   # LSTMCell/GRUCell -> LSTM/GRU
            self._node_models = NodeModels(self._modes, self.threads)
            self.loaded = Loaded(model, base_dir, where, self._modes, self._node_models)
            self.plan = Plan(model.graph, Scope(model.graph, None, (), overridable),
                             self.loaded)
            initializers = {t.name for t in model.graph.initializer}
            self._inputs = [NodeArg(i) for i in model.graph.input
                            if overridable or i.name not in initializers]
            self._outputs = [NodeArg(o) for o in model.graph.output]
            # From IR 4 an initializer listed as a graph input is a default the caller may
            # override (ONNX Runtime's get_overridable_initializers); before, a constant.
            # (In the plan built with ``overridable`` they are plain inputs already.)
            self._overridable = [NodeArg(i) for i in model.graph.input
                                 if i.name in initializers and model.ir_version >= 4
                                 and not overridable]
        except ModelError:
            raise
        except RecursionError:
            raise ModelError(f"{where}: subgraphs nested too deeply") from None
        except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, MemoryError,
                AttributeError, UnicodeError) as e:
            # protobuf hands hostile bytes through as odd values (bytes for a str field,
            # an unknown enum value, ...) that slip past the checks; the contract is one
            # exception type.
            raise ModelError(f"{where}: malformed graph ({type(e).__name__}: {e})") from e
        built = self._node_models.models
        if not isinstance(self._modes, str) and len(self._modes) != len(built):
            raise ValueError(f"precision per node needs {len(built)} entries (one per "
                             f"recurrent node); got {len(self._modes)}")
        # what runs (a mode without its instructions may take another route: Model)
        self.precision = reported([m.precision for m in built]) if built else (
            self._modes if isinstance(self._modes, str) else "fp32")
        ort_ops = [op for g in self.loaded.ort_groups for op in g.op_types]
        if ort_ops:
            require_onnxruntime(ort_ops, where)
        self._programs: dict = {}      # feed signature -> Program | _SEEN | why not
        self.input_index = {a.name: k for k, a in enumerate(self._inputs)}
        self._output_index = {a.name: k for k, a in enumerate(self._outputs)}
        # outputs whose arrays the plan reuses across runs: the caller gets a copy
        self._const_outputs = {k for k, (name, slot) in enumerate(zip(
            self.plan.output_names, self.plan.output_slots))
            if name in self.plan.consts or slot in self.plan.shared}
        # The plan that takes overrides is built on the first run that feeds one: until
        # then the defaults are folded like any constant (the fast plan).
        self._overrides: Optional["InferenceSession"] = None

    def _with_overrides(self) -> "InferenceSession":
        """This model planned with its overridable initializers as inputs."""
        if self._overrides is None:
            other = InferenceSession.__new__(InferenceSession)
            other._modes = self._modes
            other.threads = self.threads
            names = [a.name for a in self._overridable]
            try:
                other._setup(self.loaded.model, self.loaded.base_dir, self._where, True)
            except ModelError as e:
                raise ValueError(f"initializers {names} cannot be overridden in this model: "
                                 f"{e}") from None
            self._overrides = other
        return self._overrides

    # -- description -----------------------------------------------------------------------
    def get_inputs(self) -> List[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> List[NodeArg]:
        return list(self._outputs)

    def get_overridable_initializers(self) -> List[NodeArg]:
        """Initializers that are also graph inputs (IR >= 4): ``run`` takes a value for
        them in its feeds and uses the initializer when none is given."""
        return list(self._overridable)

    def get_providers(self) -> List[str]:
        return ["rnnengine"]

    def placement(self) -> Dict[str, str]:
        """{node label: "native" | "recurrent" | "if" | "loop" | "ort"} over every graph
        (folded nodes are absent): what runs where."""
        out = {}
        for plan in self.loaded.plans:
            out.update(plan.kinds)
        return out

    def state_pairs(self) -> Dict[str, str]:
        """{output: input} pairs ``stream()`` finds automatically (state_pairs.py); {} if none."""
        return find_pairs(self.loaded.model.graph, self._inputs, self._outputs)

    def __repr__(self) -> str:
        kinds = list(self.placement().values())
        counts = ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds)))
        return (f"rnnengine.InferenceSession({self._where!r}, inputs="
                f"{[a.name for a in self._inputs]}, outputs={[a.name for a in self._outputs]}, "
                f"nodes: {counts or 'all folded'})")

    # -- running ---------------------------------------------------------------------------
    def output_indices(self, output_names: Optional[Sequence[str]]) -> List[int]:
        if output_names is None:
            return list(range(len(self._outputs)))
        if isinstance(output_names, str):
            raise TypeError("output_names must be a list of names or None; got a str")
        try:
            return [self._output_index[n] for n in output_names]
        except KeyError as e:
            raise ValueError(f"unknown output name {e.args[0]!r}; the outputs are "
                             f"{[a.name for a in self._outputs]}") from None

    def new_table(self, feeds: Dict[str, np.ndarray], carried=()) -> list:
        """A value table with ``feeds`` checked and written (every input required but those
        in ``carried``: state a stream keeps inside its recurrent nodes)."""
        if not isinstance(feeds, dict):
            raise TypeError(f"feeds must be a dict of input name -> array; got "
                            f"{type(feeds).__name__}")
        v = self.plan.template.copy()
        slots = self.plan.input_slots
        for name, value in feeds.items():
            k = self.input_index.get(name)
            if k is None:
                raise ValueError(f"unknown input name {name!r}; the inputs are "
                                 f"{[a.name for a in self._inputs]}")
            v[slots[k]] = self._inputs[k].check(value)
        for k, slot in enumerate(slots):
            if v[slot] is None and self._inputs[k].name not in carried:
                raise ValueError(f"missing input {self._inputs[k].name!r} "
                                 f"({self._inputs[k].type}, shape "
                                 f"{_show(self._inputs[k].shape or [])})")
        return v

    def finish(self, v: list, indices: List[int]) -> list:
        """The outputs at ``indices`` as ONNX Runtime gives them: ndarrays the caller owns,
        none of them a feed (an Identity of an input) or another output (two outputs of one
        value), so writing into one changes nothing else."""
        out, seen = [], {id(v[s]) for s in self.plan.input_slots}
        slots = self.plan.output_slots
        for k in indices:
            value = v[slots[k]]
            if not isinstance(value, np.ndarray):
                value = np.asarray(value)
            elif (k in self._const_outputs or not value.flags.owndata
                  or id(value) in seen):
                value = value.copy()
            seen.add(id(value))
            out.append(value)
        return out

    def run(self, output_names: Optional[Sequence[str]], input_feed: Dict[str, np.ndarray],
            run_options=None) -> List[np.ndarray]:
        """Run the whole graph: the outputs named (all when None), in that order."""
        indices = self.output_indices(output_names)
        if self._overridable and isinstance(input_feed, dict) and any(
                a.name in input_feed for a in self._overridable):
            return self._with_overrides().run(output_names, input_feed, run_options)
        return self.evaluate(input_feed, indices)

    def evaluate(self, feeds: Dict[str, np.ndarray], indices: List[int],
                 fixed=()) -> List[np.ndarray]:
        """The outputs at ``indices`` for ``feeds`` (every input; ``fixed``: names among
        them that stay the same from call to call, such as a stream's fixed feeds).

        The second call with one signature of feeds (names, shapes, dtypes, and the values
        of the fixed feeds and of integer scalars) plans it into an ``executor.Program``;
        later calls with that signature run the program, one C loop, instead of the
        general path."""
        key = programs_key(feeds, fixed)
        entry = self._programs.get(key) if key is not None else None
        if entry.__class__ is Program and entry.lock.acquire(False):
            try:
                outs = entry.run(feeds)
            finally:
                entry.lock.release()
            return [outs[k] for k in indices]
        v = self.new_table(feeds)
        self.plan.execute(v)
        if key is not None and entry.__class__ is not Program:
            if entry is None:
                if len(self._programs) >= _MAX_PROGRAMS:
                    # the oldest signature: forgetting them all would rebuild the ones in use
                    try:
                        del self._programs[next(iter(self._programs))]
                    except (KeyError, StopIteration, RuntimeError):   # another thread's doing
                        pass
                self._programs[key] = _SEEN
            elif entry is _SEEN:
                static = [name for name, _, _, value in key if value is not None]
                program, why = Program.build(self, v, [n for n in feeds if n not in static],
                                             static)
                self._programs[key] = program if program is not None else why
        return self.finish(v, indices)

    def program_for(self, feeds: Dict[str, np.ndarray], fixed=()) -> Optional[Program]:
        """The program ``evaluate`` built for this signature of feeds, if it built one."""
        key = programs_key(feeds, fixed)
        entry = self._programs.get(key) if key is not None else None
        return entry if entry.__class__ is Program else None

    def program_status(self) -> Dict[tuple, str]:
        """{feed signature: "compiled: <operator kinds>" | "general path: <why>"} for the
        signatures seen twice or more (``info`` and tests read it)."""
        out = {}
        for key, entry in list(self._programs.items()):
            if entry.__class__ is Program:
                kinds = entry.kinds
                out[key] = "compiled: " + ", ".join(
                    f"{kinds.count(k)} {k}" for k in sorted(set(kinds))) + (
                    f"; called as the general path runs them: {', '.join(entry.called)}"
                    if entry.called else "")
            elif entry is not _SEEN:
                out[key] = f"general path: {entry}"
        return out

    # -- streams ---------------------------------------------------------------------------
    def stream(self, state: Optional[Dict[str, str]] = None,
               feeds: Optional[Dict[str, np.ndarray]] = None) -> SessionStream:
        """A stateful stream of the whole model (session_stream.py): state outputs fed back as
        inputs (pairs found automatically or given as ``state={"out": "in"}``), or, for a graph
        without state inputs, recurrent state carried along the time axis."""
        return SessionStream(self, state, feeds)

    def pool(self, capacity: int = 64, state: Optional[Dict[str, str]] = None,
             feeds: Optional[Dict[str, np.ndarray]] = None) -> SessionPool:
        """Up to ``capacity`` streams of the whole model stepped together."""
        return SessionPool(self, capacity, state, feeds)
