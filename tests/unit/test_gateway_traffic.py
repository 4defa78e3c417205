"""The access-log reader: counts and percentiles, incremental reads, rotation, bad lines, bounded memory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deployer.gateway import LATENCY_BOUNDS, RevisionTraffic, TrafficReader, quantile
from deployer.metrics import Metrics


def _line(service: str = "text-classify", revision: str = "3", status: int = 200, seconds: float = 0.02) -> str:
    # As nginx writes it (log_format deployer_json escape=json in templates/nginx/routes.conf.j2).
    return json.dumps({"time": "2025-01-01T00:00:00+00:00", "service": service, "revision": revision,
                       "status": status, "request_time": seconds, "upstream": "127.0.0.1:9801",
                       "upstream_status": str(status), "method": "POST"}, separators=(",", ":")) + "\n"


def _write(path: Path, *lines: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(lines)


def _by_key(reader: TrafficReader) -> dict[tuple[str, int | None], RevisionTraffic]:
    return {(traffic.service, traffic.revision): traffic for traffic in reader.read()}


def test_counts_status_classes_and_percentiles(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    # 100 requests: 90 fast (0.02 s), 10 slow (0.7 s); three 4xx, two 5xx.
    lines = [_line(seconds=0.02) for _ in range(87)] + [_line(status=404) for _ in range(3)]
    lines += [_line(seconds=0.7) for _ in range(8)] + [_line(status=502, seconds=0.7) for _ in range(2)]
    _write(log, *lines, _line(service="image", revision=""))
    stats = _by_key(TrafficReader(log))
    text = stats[("text-classify", 3)]
    assert (text.requests, text.errors_4xx, text.errors_5xx) == (100, 3, 2)
    assert text.codes == {"2xx": 95, "4xx": 3, "5xx": 2}
    assert text.p50 is not None and 0.01 < text.p50 <= 0.025  # inside the 10-25 ms bucket
    assert text.p95 is not None and 0.5 < text.p95 <= 1.0  # inside the 0.5-1 s bucket
    assert text.latency_sum == pytest.approx(90 * 0.02 + 10 * 0.7)
    assert stats[("image", None)].requests == 1


def test_quantile_interpolates_inside_a_bucket() -> None:
    buckets = [0] * len(LATENCY_BOUNDS)
    assert quantile(buckets, 0.5) is None
    buckets[LATENCY_BOUNDS.index(0.1)] = 10  # all between 50 and 100 ms
    assert quantile(buckets, 0.5) == pytest.approx(0.075)
    buckets[-1] = 90  # slower than the last bound: that bound is what is known
    assert quantile(buckets, 0.95) == 60.0


def test_reads_only_what_is_new(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    reader = TrafficReader(log)
    assert reader.read() == ()  # no file yet
    _write(log, _line(), _line())
    assert reader.poll() == 2
    _write(log, _line())
    assert reader.poll() == 1 and reader.poll() == 0
    assert _by_key(reader)[("text-classify", 3)].requests == 3


def test_a_line_written_in_two_parts_counts_once(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    reader = TrafficReader(log)
    line = _line()
    _write(log, line[:30])
    assert reader.poll() == 0
    _write(log, line[30:])
    assert reader.poll() == 1


def test_rotation_by_rename_reads_the_old_file_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    reader = TrafficReader(log)
    _write(log, _line())
    assert reader.poll() == 1
    _write(log, _line())  # written before the rename, not yet read
    os.replace(log, tmp_path / "access.log.1")
    _write(log, _line(revision="4"), _line(revision="4"))
    assert reader.poll() == 3
    stats = _by_key(reader)
    assert stats[("text-classify", 3)].requests == 2 and stats[("text-classify", 4)].requests == 2


def test_lines_landing_in_the_old_file_after_a_rotation_still_count(tmp_path: Path) -> None:
    # nginx's workers reopen their log a moment after the master: a late line goes to the renamed file.
    log = tmp_path / "access.log"
    reader = TrafficReader(log)
    _write(log, _line())
    assert reader.poll() == 1
    os.replace(log, tmp_path / "access.log.1")
    _write(log, _line(revision="4"))
    assert reader.poll() == 1
    _write(tmp_path / "access.log.1", _line())  # late, in the old file
    _write(log, _line(revision="4"))
    assert reader.poll() == 2
    stats = _by_key(reader)
    assert stats[("text-classify", 3)].requests == 2 and stats[("text-classify", 4)].requests == 2


def test_a_truncated_log_is_read_again_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    reader = TrafficReader(log)
    _write(log, _line(), _line(), _line())
    assert reader.poll() == 3
    log.write_text(_line(revision="5"))  # copytruncate, then one new line
    assert reader.poll() == 1
    assert _by_key(reader)[("text-classify", 5)].requests == 1


def test_malformed_and_overlong_lines_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    reader = TrafficReader(log, max_line_bytes=1024)
    _write(log, "not json\n", "[1, 2]\n", '{"service": "a"}\n', _line(service="Bad Name"), _line(revision="x"),
           _line(status=42), _line(seconds=-1), "\n", "x" * 5000 + "\n", _line())
    assert reader.poll() == 1
    assert reader.malformed == 8
    _write(log, "y" * 3000)  # an over-long line still being written: dropped, never held
    assert reader.poll() == 0
    _write(log, "y" * 3000 + "\n", _line())
    assert reader.poll() == 1
    assert _by_key(reader)[("text-classify", 3)].requests == 2


def test_requests_no_route_took_are_not_counted(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _write(log, _line(service="", revision="", status=404))
    reader = TrafficReader(log)
    assert reader.poll() == 0 and reader.read() == () and reader.malformed == 0


def test_memory_is_capped_per_service_and_in_services(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    reader = TrafficReader(log, max_revisions=3, max_services=2)
    _write(log, *(_line(revision=str(revision)) for revision in range(1, 6)))
    _write(log, _line(revision="3"))  # seen again: now the most recent
    assert sorted(revision or 0 for _, revision in _by_key(reader)) == [3, 4, 5]
    _write(log, _line(revision="6"))
    assert sorted(revision or 0 for _, revision in _by_key(reader)) == [3, 5, 6]  # 4 was the least recently seen
    _write(log, _line(service="b"), _line(service="c"))
    assert sorted({service for service, _ in _by_key(reader)}) == ["b", "c"]


def test_a_restarted_daemon_can_start_at_the_end(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _write(log, _line(), _line())
    reader = TrafficReader(log, start_at_end=True)
    assert reader.poll() == 0
    _write(log, _line())
    assert reader.poll() == 1


def test_forget_drops_a_service(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _write(log, _line(), _line(service="b"))
    reader = TrafficReader(log)
    reader.poll()
    reader.forget("b")
    assert [traffic.service for traffic in reader.snapshot()] == ["text-classify"]


def test_metrics_export_traffic_by_service_revision_and_class(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _write(log, _line(), _line(status=503, seconds=2.0), _line(revision="4", status=201))
    metrics = Metrics()
    metrics.observe_gateway(TrafficReader(log).read)
    text = metrics.exposition().decode()
    assert 'deployer_gateway_requests_total{code="2xx",revision="3",service="text-classify"} 1.0' in text
    assert 'deployer_gateway_requests_total{code="5xx",revision="3",service="text-classify"} 1.0' in text
    assert 'deployer_gateway_requests_total{code="2xx",revision="4",service="text-classify"} 1.0' in text
    assert 'deployer_gateway_request_duration_seconds_bucket{le="0.025",service="text-classify"} 2.0' in text
    assert 'deployer_gateway_request_duration_seconds_bucket{le="+Inf",service="text-classify"} 3.0' in text
    assert 'deployer_gateway_request_duration_seconds_count{service="text-classify"} 3.0' in text
    _write(log, _line())
    assert 'code="2xx",revision="3",service="text-classify"} 2.0' in metrics.exposition().decode()
