"""The suite's own mesh gateway must not throttle the suite (see tests/gateway/conftest.py); the
rate-limit tests start gateways of their own with small limits."""

from __future__ import annotations

import os

SUITE_RATE_LIMITS = {
    "GATEWAY_RATELIMIT_IP": "100000/60",
    "GATEWAY_RATELIMIT_USER": "100000/60",
    "GATEWAY_RATELIMIT_LOGIN": "100000/60",
}
for _name, _value in SUITE_RATE_LIMITS.items():
    os.environ.setdefault(_name, _value)
