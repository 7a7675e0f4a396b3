"""The load generator: Locust user journeys through the gateway's HTTP/JSON API (journeys.py).

Locust brings gevent, which monkeypatches the standard library when it is imported: journeys.py is
only ever loaded by Locust's own process (`python -m locust -f loadtest/journeys.py`, started by
`make load` or by tests/load as a subprocess). report.py reads a run's CSV with the standard
library only; it is what the launcher and the tests import.
"""
