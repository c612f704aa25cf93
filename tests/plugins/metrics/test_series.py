"""``runtime.plugins.metrics.series``: the families ``prometheus_client`` would expose.

Each test counts the same observations in a series and in the
``prometheus_client`` metric it stands in for, and compares the collected
families sample by sample (``_created`` by name and labels only: the two
objects are not created at the same instant).
"""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from runtime.plugins.metrics.series import CounterSeries, HistogramSeries


def samples(metric: Metric) -> list[tuple[str, dict[str, str], Any]]:
    return [(s.name, s.labels, None if s.name.endswith("_created") else s.value)
            for s in metric.samples]


def same_family(ours: Metric, theirs: Metric) -> None:
    assert (ours.name, ours.documentation, ours.type) == (
        theirs.name, theirs.documentation, theirs.type)
    assert samples(ours) == samples(theirs)


class _Exposition:
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> list[Metric]:
        return [self.family]


def test_counter_series_labelled_matches_prometheus_counter() -> None:
    ours = CounterSeries("moorage_api_requests", "API requests.", ["method", "route", "status"])
    theirs = Counter("moorage_api_requests", "API requests.", ["method", "route", "status"],
                     registry=CollectorRegistry())
    for labels, amount in [(("GET", "/v1/version", "200"), 1), (("GET", "/v1/x", "404"), 1),
                           (("GET", "/v1/version", "200"), 2.5)]:
        ours.inc(labels, amount)
        theirs.labels(*labels).inc(amount)
    [expected] = theirs.collect()
    same_family(ours.family(), expected)


def test_counter_series_unlabelled_exists_at_zero() -> None:
    ours = CounterSeries("moorage_gc_collections", "Garbage collections run.")
    theirs = Counter("moorage_gc_collections", "Garbage collections run.",
                     registry=CollectorRegistry())
    [expected] = theirs.collect()
    same_family(ours.family(), expected)
    ours.inc()
    theirs.inc()
    [expected] = theirs.collect()
    same_family(ours.family(), expected)


def test_counter_series_exposition_is_byte_identical_but_for_created() -> None:
    ours = CounterSeries("moorage_gc_removed_bytes", "Bytes freed.", ["kind"])
    theirs = Counter("moorage_gc_removed_bytes", "Bytes freed.", ["kind"],
                     registry=CollectorRegistry())
    ours.inc(("content",), 4096)
    theirs.labels("content").inc(4096)
    mine = generate_latest(_Exposition(ours.family(created=False)))
    [family] = theirs.collect()
    family.samples = [s for s in family.samples if not s.name.endswith("_created")]
    assert mine == generate_latest(_Exposition(family))


def test_counter_series_refuses_negative_amounts_and_wrong_labels() -> None:
    series = CounterSeries("c", "C.", ["kind"])
    with pytest.raises(ValueError, match="non-negative"):
        series.inc(("a",), -1)
    with pytest.raises(ValueError, match="expected labels"):
        series.inc(("a", "b"))


@pytest.mark.parametrize("observations", [
    [], [0.0], [0.0004, 0.001, 0.003, 0.7, 4.0, 99.0, math.inf], [1e-9] * 3,
])
def test_histogram_series_matches_prometheus_histogram(observations: list[float]) -> None:
    buckets = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
    ours = HistogramSeries("moorage_gc_pause_seconds", "Pause.", buckets)
    theirs = Histogram("moorage_gc_pause_seconds", "Pause.", buckets=buckets,
                       registry=CollectorRegistry())
    for amount in observations:
        ours.observe(amount)
        theirs.observe(amount)
    [expected] = theirs.collect()
    same_family(ours.family(), expected)


def test_histogram_series_labelled_matches_prometheus_histogram() -> None:
    buckets = (0.001, 0.01, 0.1, 1.0, 60.0)
    ours = HistogramSeries("lat", "Latency.", buckets, ["method", "route"])
    theirs = Histogram("lat", "Latency.", ["method", "route"], buckets=buckets,
                       registry=CollectorRegistry())
    for labels, amount in [(("GET", "/a"), 0.002), (("POST", "/b"), 0.5), (("GET", "/a"), 70)]:
        ours.observe(amount, labels)
        theirs.labels(*labels).observe(amount)
    [expected] = theirs.collect()
    same_family(ours.family(), expected)


def test_histogram_series_checks_its_buckets_as_prometheus_does() -> None:
    with pytest.raises(ValueError, match="sorted"):
        HistogramSeries("h", "H.", (1.0, 0.5))
    with pytest.raises(ValueError, match="two buckets"):
        HistogramSeries("h", "H.", (math.inf,))
    assert HistogramSeries("h", "H.", (1.0, math.inf)).bounds == [1.0, math.inf]


def test_series_do_not_import_prometheus_client_until_collected() -> None:
    code = ("import sys; from runtime.plugins.metrics import service; "
            "s = service.CounterSeries('c', 'C.'); s.inc(); "
            "h = service.HistogramSeries('h', 'H.', (1.0,)); h.observe(0.5); "
            "print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
