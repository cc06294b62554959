"""The one exception type the package adds."""


class ModelError(ValueError):
    """A model file or set of weights that cannot be loaded: malformed, inconsistent or
    unsupported. The message names the file, the node and the reason."""
