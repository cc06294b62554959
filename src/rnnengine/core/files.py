"""Opening the files a model is read from: regular files only, their size known up front.

A FIFO (which a tar archive can carry), a device such as /dev/zero, or a directory given as
the model path or named as ONNX external data would otherwise block the loader forever or
read until memory runs out. Opening with O_NONBLOCK never waits for a FIFO's writer; the
descriptor's own fstat then decides, so a file swapped after a check cannot slip through."""
from __future__ import annotations

import os
import stat

from ..errors import ModelError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def open_regular(path: str, what: str):
    """-> (binary file object, size in bytes) of the regular file ``path``; ModelError naming
    it and ``what`` it was for when it is anything else; OSError when it cannot be opened."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a file")
            raise ModelError(f"{path}: {what} is {kind}, not a regular file; refused")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise
