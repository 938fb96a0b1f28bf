"""Counters and summaries rendered in the Prometheus text format (version 0.0.4), no dependency."""

from __future__ import annotations

import math
import threading
from collections import defaultdict

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    "omnidit_http_requests_total": ("counter", "HTTP requests by method, route template and status"),
    "omnidit_http_request_seconds": ("summary", "HTTP request latency by route template"),
    "omnidit_images_generated_total": ("counter", "images returned by /v1/images/generations"),
    "omnidit_rejected_total": ("counter", "requests turned away with 429, by reason"),
    "omnidit_step_seconds": ("summary", "denoising step wall time, by kind (image steps count once per request)"),
    "omnidit_image_batch_size": ("summary", "images in the generate_many call that served an image request"),
    "omnidit_image_queue_depth": ("gauge", "image requests admitted and not yet answered"),
    "omnidit_video_queue_depth": ("gauge", "video jobs waiting for a replica"),
    "omnidit_video_jobs": ("gauge", "video jobs in the store, by status"),
}


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, esc)) + "}"


def _num(v: float) -> str:
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    return "NaN" if math.isnan(v) else repr(float(v))


class Metrics:
    """Thread-safe counters (`inc`) and count/sum summaries (`observe`) for this process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._summaries: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._counters[name][tuple(labels.items())] += value

    def observe(self, name: str, value: float, count: float = 1.0, **labels: str) -> None:
        """Add `value` to the sum and `count` to the count (count > 1: a total over several events)."""
        with self._lock:
            s = self._summaries[name][tuple(labels.items())]
            s[0] += count
            s[1] += value

    def render(self, gauges: dict[str, list[tuple[dict, float]]] | None = None,
               summaries: dict[str, list[tuple[dict, float, float]]] | None = None) -> str:
        """Text exposition; `gauges`/`summaries` are point-in-time values from elsewhere (the job store)."""
        with self._lock:
            counters = {n: dict(v) for n, v in self._counters.items()}
            sums = {n: {k: list(x) for k, x in v.items()} for n, v in self._summaries.items()}
        for name, rows in (summaries or {}).items():
            for labels, count, total in rows:
                s = sums.setdefault(name, {}).setdefault(tuple(labels.items()), [0.0, 0.0])
                s[0] += count
                s[1] += total
        lines: list[str] = []

        def header(name: str) -> None:
            kind, text = _HELP.get(name, ("untyped", name))
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")

        for name in sorted(counters):
            header(name)
            lines += [f"{name}{_labels(dict(k))} {_num(v)}" for k, v in sorted(counters[name].items())]
        for name in sorted(sums):
            header(name)
            for k, (count, total) in sorted(sums[name].items()):
                lines.append(f"{name}_count{_labels(dict(k))} {_num(count)}")
                lines.append(f"{name}_sum{_labels(dict(k))} {_num(total)}")
        for name in sorted(gauges or {}):
            header(name)
            lines += [f"{name}{_labels(labels)} {_num(v)}" for labels, v in gauges[name]]
        return "\n".join(lines) + "\n"
