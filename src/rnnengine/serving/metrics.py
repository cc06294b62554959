"""What ``rnnengine serve`` counts, and its Prometheus text exposition (``GET /metrics``).

Every update happens on the server's event loop thread, so the counters need no lock."""
from __future__ import annotations

import bisect
from typing import Dict

# Step latency buckets (seconds): a streamed step of a small model takes well under a
# millisecond; the top buckets catch steps that waited in a loaded batcher.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_COUNTERS = {
    "steps_total": "Steps applied to streams",
    "streams_opened_total": "Streams opened (new or resumed)",
    "streams_refused_total": "Streams refused by admission control",
    "streams_idle_closed_total": "Streams closed after the idle TTL",
    "streams_drained_total": "Streams handed their state at shutdown",
    "step_errors_total": "Steps refused: bad frames or inputs",
    "step_deadline_exceeded_total": "Steps that missed the per-step timeout",
    "runs_total": "One-shot POST /run calls answered",
}


class Metrics:
    """Counters, the step latency histogram and a smoothed recent step latency (what
    admission control reads)."""

    def __init__(self):
        self.counts: Dict[str, int] = {name: 0 for name in _COUNTERS}
        self.buckets = [0] * len(BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.recent = 0.0          # exponentially weighted step latency, seconds

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def observe(self, seconds: float) -> None:
        k = bisect.bisect_left(BUCKETS, seconds)
        if k < len(self.buckets):
            self.buckets[k] += 1
        self.latency_sum += seconds
        self.latency_count += 1
        self.recent = seconds if self.latency_count == 1 else 0.9 * self.recent + 0.1 * seconds

    def render(self, streams_open: int, batcher_stats: dict) -> str:
        """The Prometheus text format (version 0.0.4)."""
        lines = []

        def metric(name, kind, help_text, value, suffix=""):
            lines.append(f"# HELP rnnengine_{name} {help_text}")
            lines.append(f"# TYPE rnnengine_{name} {kind}")
            lines.append(f"rnnengine_{name}{suffix} {value}")

        for name, help_text in _COUNTERS.items():
            metric(name, "counter", help_text, self.counts[name])
        metric("streams_open", "gauge", "Streams open now", streams_open)
        metric("queue_depth", "gauge", "Steps queued in the batcher, not yet in a batch",
               batcher_stats.get("queued", 0))
        metric("batches_total", "counter", "Batched pool steps run", batcher_stats["batches"])
        lines.append("# HELP rnnengine_step_seconds Step latency, frame received to result")
        lines.append("# TYPE rnnengine_step_seconds histogram")
        total = 0
        for bound, n in zip(BUCKETS, self.buckets):
            total += n
            lines.append(f'rnnengine_step_seconds_bucket{{le="{bound}"}} {total}')
        lines.append(f'rnnengine_step_seconds_bucket{{le="+Inf"}} {self.latency_count}')
        lines.append(f"rnnengine_step_seconds_sum {self.latency_sum}")
        lines.append(f"rnnengine_step_seconds_count {self.latency_count}")
        return "\n".join(lines) + "\n"
