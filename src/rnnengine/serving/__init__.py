"""Serving many streams: the ``Batcher`` (``batcher``, over the pools of ``pools``) and the
ASGI server behind ``rnnengine serve`` (``app``, ``metrics``).

May import: ``runtime`` and everything below it."""
