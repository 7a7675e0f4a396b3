"""bench's database-read figures: /metrics parsed into reads by target and fallbacks by reason,
their difference over a run, the standbys named by the instances, and the table's rows (reads
per request on the primary and the replica, the replica's share, "no DB reads" for none)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.cases import Case, User
from bench.h2load import Result
from bench.replicas import ReadCounts, replicas_down, samples, standby_servers
from bench.report import NO_READS, STANDBY, Measured, table, write_results
from launcher.infra import PostgresServer

REPLICA = "127.0.0.1:5433/capsules_t1a2b"


def metrics(primary: float, replica: float, not_replayed: float = 0.0, up: float = 1.0) -> str:
    return (
        "# HELP db_reads_total Database reads\n"
        "# TYPE db_reads_total counter\n"
        f'db_reads_total{{target="primary"}} {primary}\n'
        f'db_reads_total{{target="{REPLICA}"}} {replica}\n'
        f'db_reads_created{{target="primary"}} 1.7e+09\n'
        f'db_replica_fallbacks_total{{reason="not_replayed"}} {not_replayed}\n'
        'db_replica_fallbacks_total{reason="unhealthy"} 0.0\n'
        f'db_replica_up{{replica="{REPLICA}"}} {up}\n'
        f'db_replica_lag_seconds{{replica="{REPLICA}"}} 0.0\n'
        "process_cpu_seconds_total 12.5\n"
    )


def test_samples_read_labels_and_values() -> None:
    assert samples(metrics(3, 4), "db_reads_total") == [({"target": "primary"}, 3.0), ({"target": REPLICA}, 4.0)]
    assert samples(metrics(3, 4), "process_cpu_seconds_total") == [({}, 12.5)]


def test_counts_sum_instances_and_subtract() -> None:
    before = ReadCounts.from_texts([metrics(10, 5), metrics(1, 0)])
    after = ReadCounts.from_texts([metrics(12, 95, not_replayed=2), metrics(3, 40)])
    delta = after - before
    assert delta.reads == {"primary": 4.0, REPLICA: 130.0}
    assert delta.fallbacks == {"not_replayed": 2.0, "unhealthy": 0.0}
    assert (delta.primary, delta.replica, delta.total) == (4.0, 130.0, 134.0)
    assert delta.replica_share_pct() == 100.0 * 130 / 134


def test_no_reads_has_no_share() -> None:
    assert (ReadCounts.from_texts([metrics(7, 7)]) - ReadCounts.from_texts([metrics(7, 7)])).replica_share_pct() is None


def test_standbys_and_replicas_down_from_the_instances_metrics() -> None:
    primary = PostgresServer("127.0.0.1", 5432, "postgres", "secret")
    assert standby_servers([metrics(0, 0), metrics(0, 0)], primary) == [
        PostgresServer("127.0.0.1", 5433, "postgres", "secret")
    ]
    without = 'db_reads_total{target="primary"} 3.0\n'
    assert standby_servers([without], primary) == []
    assert replicas_down({"a:1": metrics(0, 0), "b:2": metrics(0, 0, up=0)}) == [f"b:2 {REPLICA}"]


def measured(
    key: str, done: int, reads: ReadCounts | None, *, baseline: bool = False, cpu_us: dict[str, float] | None = None
) -> Measured:
    case = Case(key, key, f"http://x/{key}", lambda: "", baseline=baseline)
    result = Result(key, 1000.0, done, 0, 1.0, 2.0, 1.5, status_2xx=done, done=done, body_bytes=10.0)
    return Measured(case, "200", result, cpu_us or {}, reads=reads)


def rows_of(lines: list[str], label: str) -> list[str]:
    (line,) = [line for line in lines if line.startswith(label)]
    return line[24:].split()


def test_table_rows_per_case() -> None:
    rows = [
        measured("http-echo", 5000, ReadCounts(), baseline=True),
        measured("me", 4000, ReadCounts({"primary": 0.0, REPLICA: 0.0})),
        measured("inbox", 2000, ReadCounts({"primary": 10.0, REPLICA: 30.0}, {"not_replayed": 10.0})),
        measured("connections", 1000, ReadCounts({"primary": 2000.0})),
        measured("grpc-me", 1000, None),
    ]
    lines = table(rows, [])
    assert rows_of(lines, "req/s") == ["1000"] * 5  # the existing rows stay
    assert rows_of(lines, "DB reads in run") == ["-", "0", "40", "2000", "-"]
    assert rows_of(lines, "DB reads/req primary") == ["-", "0.000", "0.005", "2.000", "-"]
    assert rows_of(lines, "DB reads/req replica") == ["-", "0.000", "0.015", "0.000", "-"]
    share = next(line for line in lines if line.startswith("replica share of reads %"))
    assert share[24:].split(maxsplit=1)[1].startswith(NO_READS)
    assert share.split()[-3:] == ["75", "0", "-"]

    assert not any("standby backends" in line for line in lines)  # no standby, no row


def test_standby_backends_row_when_a_standby_was_metered() -> None:
    lines = table([measured("connections", 1000, ReadCounts(), cpu_us={STANDBY: 123.0})], [])
    assert rows_of(lines, "  standby backends") == ["123"]


def test_results_json_keeps_targets_and_fallbacks(tmp_path: Path) -> None:
    rows = [measured("inbox", 2000, ReadCounts({"primary": 10.0, REPLICA: 30.0}, {"not_replayed": 10.0}))]
    user = User("pf21", "pf21@example.com", "id", 99, 10)
    path = write_results(tmp_path, rows, [], user, {}, "table")
    (case,) = json.loads(path.read_text())["cases"]
    assert case["db_reads"] == {
        "by_target": {"primary": 10.0, REPLICA: 30.0},
        "primary_per_request": 0.005,
        "replica_per_request": 0.015,
        "replica_share_pct": 75.0,
        "replica_fallbacks_by_reason": {"not_replayed": 10.0},
    }
