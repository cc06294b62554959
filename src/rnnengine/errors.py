"""The typed errors the package raises.

``Error`` is the base of them all. Each one also derives from the built-in class the same
failure raised before it had a type of its own, so ``except ValueError`` / ``except
RuntimeError`` written against older versions keeps catching it."""


class Error(Exception):
    """Base of every error rnnengine defines: ``except rnnengine.Error`` catches them all."""


class ModelError(Error, ValueError):
    """A model file or set of weights that cannot be loaded: malformed, inconsistent or
    unsupported. The message names the file, the node and the reason."""


class StreamsFull(Error, RuntimeError):
    """A pool or batcher already holds as many streams as it may: close one first (or make
    it larger). A server refuses the new stream."""


class StreamClosed(Error, ValueError, RuntimeError):
    """A stream id that is not open (closed, or never opened here), or a step cut off because
    its stream or batcher was closed. An unknown id used to raise ValueError and a closed
    batcher RuntimeError, so it is both."""


class ConcurrentStep(Error, RuntimeError):
    """A stream, pool or compiled step called from a second thread while a first is inside
    it (or a second step of one Batcher stream while its first is in flight). The call is
    refused and the state is untouched: give each thread its own stream, or serialize."""


class DeadlineExceeded(Error, TimeoutError, RuntimeError):
    """A step that did not start before its deadline; it never ran, so the stream's state is
    as it was before the call."""
