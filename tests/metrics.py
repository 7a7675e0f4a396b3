"""Reading Prometheus metrics in tests: in this process the way a scrape reads them (`collect()`),
not through the client library's private fields; in a running instance from its /metrics."""

from __future__ import annotations

import re
import urllib.request

from prometheus_client.metrics import MetricWrapperBase

from launcher.stack import Stack


def sample(metric: MetricWrapperBase, **labels: str) -> float:
    """The current value of a counter or gauge (of its child with these labels)."""
    (family,) = metric.collect()
    names = {family.name, f"{family.name}_total"}  # a counter's value is its `_total` sample
    return next(s.value for s in family.samples if s.name in names and s.labels == labels)


def scraped(admin_address: str, pattern: str) -> float:
    """The sum of the samples of one instance's /metrics that `pattern` matches (its one group
    captures the value), e.g. r'grpc_server_handled_total\\{[^}]*method="GetUsers"[^}]*\\} (\\S+)'."""
    with urllib.request.urlopen(f"http://{admin_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(value) for value in re.findall(pattern, text))


def summed(stack: Stack, service: str, pattern: str) -> float:
    """`scraped` over every instance of a service of the stack."""
    return sum(scraped(instance.admin_address, pattern) for instance in stack.instances[service])
