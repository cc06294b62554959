"""The ONNX helper library: reading tensors and attributes, folding constant subgraphs
through the same operators the runtime uses (``fold``, over ``ops``), the unrolled-cell
patterns (``cell_patterns``) and the rewrite that turns them into LSTM/GRU nodes
(``rewrite``). Named after the format; ``import onnx`` inside it is the ``onnx`` package.

May import: ``ops``, ``core``, ``errors``."""
