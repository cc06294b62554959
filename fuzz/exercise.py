"""What the fuzzers do with a model that loaded or was built: run it every way it can run, on
its own declared sizes (Model.run with and without lengths; for one-way models a Stream, step
and run, and a Pool stepping two streams in both orders). This is what reaches the C drivers'
buffers, so a model whose sizes disagree with them is found here, by the sanitizer build."""
import numpy as np

from rnnengine.core.checks import is_one_way


def run_every_way(model) -> None:
    x = np.linspace(-1, 1, 3 * 2 * model.input_size, dtype=np.float32).reshape(3, 2, -1)
    if model.batch_first:
        x = x.transpose(1, 0, 2)
    model.run(x)
    model.run(x, lengths=[3, 1])
    if is_one_way(model.layers):
        stream = model.stream(batch=2)
        stream.step(np.ones((2, model.input_size), np.float32))
        stream.run(x)
        pool = model.pool(capacity=3)
        ids = [pool.open(), pool.open()]
        pool.step(ids, np.ones((2, model.input_size), np.float32))
        pool.step(ids[::-1], np.ones((2, model.input_size), np.float32))
