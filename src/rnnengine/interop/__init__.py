"""Bridges from an rnnengine ``Model`` to other engines, for comparing and benchmarking:

    onnx_export  the Model as an ONNX graph of LSTM/GRU/RNN nodes (its loaded weights)
    ort          that graph in an ONNX Runtime session: whole sequences, and steps with the
                 state ping-ponged between two IOBinding buffers (ORT's fastest streaming)
    pytorch      the Model as torch.nn.LSTM/GRU/RNN and per-layer cells

The command line's ``bench``/``verify`` and the scripts in ``bench/`` use these. onnx,
onnxruntime and torch are imported by the submodules that need them, when they are imported.
"""


class Unsupported(Exception):
    """The other engine cannot express this model; the message says why."""
