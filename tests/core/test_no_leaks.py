"""Memory does not grow over a million streaming steps (nor over many whole-sequence runs).
Measured as resident set size in a fresh subprocess, after a warm-up that lets the allocator
and NumPy's caches settle."""
import os
import subprocess
import sys
import textwrap

import pytest

CODE = textwrap.dedent("""
    import numpy as np
    from rnnengine import Layer, Model

    def rss_kib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4

    rng = np.random.default_rng(0)
    model = Model([Layer.from_onnx("lstm", rng.standard_normal((1, 32, 8)) * 0.1,
                                   rng.standard_normal((1, 32, 8)) * 0.1)])
    stream = model.stream(batch=1)
    x = np.ones((1, 8), np.float32)
    seq = np.ones((20, 3, 8), np.float32)
    for _ in range(100_000):
        stream.step(x)
    for _ in range(2_000):
        model.run(seq, lengths=[20, 5, 0])
    before = rss_kib()
    for _ in range(1_000_000):
        stream.step(x)
    for _ in range(20_000):
        model.run(seq, lengths=[20, 5, 0])
    print(rss_kib() - before)
""")


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer's quarantine keeps freed memory resident by design")
def test_rss_does_not_grow_over_a_million_steps():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    growth_kib = int(done.stdout.strip())
    assert growth_kib < 1024, f"resident memory grew by {growth_kib} KiB"
