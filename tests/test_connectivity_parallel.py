"""Probing with one forked process per core gives the same answers, also from several threads."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from pamflow.connectivity import Target, probe, prober


@pytest.fixture
def ports():
    listeners, closed = [], []
    for _ in range(20):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1024)
        listeners.append(s)
    for _ in range(20):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        closed.append(s.getsockname()[1])
        s.close()
    yield [s.getsockname()[1] for s in listeners], closed
    for s in listeners:
        s.close()


def test_forked_probe_matches_in_order_under_concurrent_threads(ports, monkeypatch):
    open_ports, closed_ports = ports
    monkeypatch.setattr(prober, "PARALLEL_MIN_ENDPOINTS", 10)
    # device i: reachable exactly when i % 3 == 0 (one open port among closed ones)
    targets = []
    for i in range(300):
        chosen = [closed_ports[i % 20], closed_ports[(i + 7) % 20]]
        if i % 3 == 0:
            chosen.append(open_ports[i % 20])
        targets.append(Target(i, f"d{i}", "127.0.0.1", tuple(chosen)))

    def run(_):
        return probe(targets, processes=2, connect_timeout=3.0, concurrency=64)

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(run, range(4)))
    for results in outcomes:
        assert [r.target.device_id for r in results] == list(range(300))
        assert [r.reachable for r in results] == [i % 3 == 0 for i in range(300)]
        for r in results:
            answered = [p.port for p in r.ports if p.answered]
            assert answered == ([open_ports[r.target.device_id % 20]] if r.reachable else [])
