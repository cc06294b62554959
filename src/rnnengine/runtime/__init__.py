"""Running models: the layer stack ``Model`` with its ``Stream`` and ``Pool``; the whole-graph
``InferenceSession`` with its plan (``plan``, ``steps``, ``shapes``, ``views``), the executor
(``executor``, ``lowering``, ``_exec``), session streams and pools (``session_stream``,
``stream_plan``, ``stream_runner``, ``_plan``), state pairs, the time axis, the state formats
(``state_io``, ``state_blob``), ``precision_auto``, the ONNX test backend and the public entries
``load``/``from_torch``/``from_keras`` (``load``).

May import: ``loaders``, ``onnx``, ``ops``, ``core``, ``errors``."""
