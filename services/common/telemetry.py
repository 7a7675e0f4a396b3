"""The Prometheus metrics every service exports (RED per RPC, cache, database pool, background
jobs and the purge)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# RED metrics per RPC (rate, errors, duration).
RPC_REQUESTS = Counter("grpc_server_handled_total", "RPCs handled", ["service", "method", "code"])
RPC_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "RPC handling time",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE_REQUESTS = Counter("cache_requests_total", "Cache look-ups", ["cache", "result"])
CACHE_ERRORS = Counter("cache_errors_total", "Redis errors seen by the cache (served from the database)")
DB_POOL_CHECKED_OUT = Gauge("db_pool_checked_out", "Connections checked out of the pool", ["role"])
DB_READS = Counter("db_reads_total", "Database reads by where they ran (primary or a replica)", ["target"])
DB_POOL_WAIT = Histogram(
    "db_pool_wait_seconds",
    "Time to get a connection from the pool",
    ["role"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
# Lifecycle-owned background jobs (services/common/background.py) and the housekeeping purge.
BACKGROUND_RUNNING = Gauge("background_task_running", "1 while the background task runs", ["task"])
BACKGROUND_RESTARTS = Counter(
    "background_task_restarts_total", "Background tasks started again after a crash", ["task"]
)
PURGED_ROWS = Counter("purged_rows_total", "Rows removed by the housekeeping purge", ["table"])
