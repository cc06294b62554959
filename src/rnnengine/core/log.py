"""The package's logger, ``logging.getLogger("rnnengine")``.

The library only writes to it; it adds no handler but a NullHandler, so nothing is printed
unless the application configures logging (``rnnengine serve`` does)."""
import logging

log = logging.getLogger("rnnengine")
log.addHandler(logging.NullHandler())
