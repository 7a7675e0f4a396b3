"""Reading a Prometheus metric in a test the way a scrape reads it (`collect()`), not through the
client library's private fields."""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase


def sample(metric: MetricWrapperBase, **labels: str) -> float:
    """The current value of a counter or gauge (of its child with these labels)."""
    (family,) = metric.collect()
    names = {family.name, f"{family.name}_total"}  # a counter's value is its `_total` sample
    return next(s.value for s in family.samples if s.name in names and s.labels == labels)
