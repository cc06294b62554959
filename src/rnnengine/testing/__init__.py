"""The float64 NumPy reference of the recurrent layers (``reference``): the oracle the tests
compare the kernels against, never the engine's compute path.

May import: nothing from the package."""
