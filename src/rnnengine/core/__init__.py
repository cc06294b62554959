"""The engine's core: the recurrent layer data model (``layers``), gate orders, the
precision policy (``precision_route``), argument checks, the log, safe file reading, and the
compiled kernels' Python face: ``kernels`` (cells, stream and sequence cores, the ISA choice),
``dense`` (dense heads) and ``conv`` (1-D convolution), over the C headers in
``include/rnnengine/``.

May import: ``rnnengine.errors`` only. Everything else in the package builds on it."""
