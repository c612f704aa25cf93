"""Counters and histograms kept in plain floats, turned into Prometheus families when scraped.

``prometheus_client`` costs the daemon about 1 MB of memory for as long as it
runs (its exposition module brings ``wsgiref``, ``http.server`` and
``socketserver`` with it) while an idle daemon is never scraped. The series
here count what the daemon's own metrics need with a dict and a list per
label set, and :mod:`prometheus_client` is imported only by :meth:`family`,
that is on the first scrape.

The families are the ones ``prometheus_client.Counter`` and ``Histogram``
would expose for the same observations: the same sample names (``_total``,
``_bucket``, ``_count``, ``_sum``, ``_created``), label order, bucket bounds
and creation times, so the exposition is unchanged.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["CounterSeries", "HistogramSeries", "created_series_enabled"]


def created_series_enabled() -> bool:
    """Whether ``_created`` samples are exposed, read as ``prometheus_client`` reads it."""
    setting = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False")
    return setting.lower() not in ("true", "1", "t")


class CounterSeries:
    """A counter family: one running total per label set.

    An unlabelled counter exists (at zero) from its creation, a labelled one's
    series from their first increment, as with ``prometheus_client.Counter``.

    Args:
        name: The family name, without ``_total``.
        documentation: The family's help text.
        labelnames: The label names, in order.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        #: Label values -> [total, creation time].
        self._series: dict[tuple[str, ...], list[float]] = {}
        if not self.labelnames:
            self._series[()] = [0.0, time.time()]

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        """Add ``amount`` to the series of ``labels`` (values in :attr:`labelnames` order).

        Raises:
            ValueError: ``amount`` is negative, or ``labels`` has the wrong length.
        """
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        series = self._series.get(labels)
        if series is None:
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {labels}")
            series = self._series[labels] = [0.0, time.time()]
        series[0] += amount

    def family(self, created: bool = True) -> Metric:
        """The family as ``prometheus_client.Counter`` would collect it."""
        from prometheus_client.metrics_core import Metric

        metric = Metric(self.name, self.documentation, "counter")
        for labels, (total, since) in self._series.items():
            named = dict(zip(self.labelnames, labels, strict=True))
            metric.add_sample(self.name + "_total", named, total)
            if created:
                metric.add_sample(self.name + "_created", named, since)
        return metric


class _Observed:
    """One label set of a histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "created", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0.0] * buckets
        self.sum = 0.0
        self.created = time.time()


class HistogramSeries:
    """A histogram family with fixed bucket bounds; ``+Inf`` is added as the last.

    Args:
        name: The family name.
        documentation: The family's help text.
        buckets: Upper bounds, ascending.
        labelnames: The label names, in order.

    Raises:
        ValueError: The bounds are not ascending, or fewer than two with ``+Inf``.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 labelnames: Sequence[str] = ()) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds and bounds[-1] != math.inf:
            bounds.append(math.inf)
        if len(bounds) < 2:
            raise ValueError("Must have at least two buckets")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = bounds
        self._series: dict[tuple[str, ...], _Observed] = {}
        if not self.labelnames:
            self._series[()] = _Observed(len(bounds))

    def observe(self, amount: float, labels: tuple[str, ...] = ()) -> None:
        """Count ``amount`` in the first bucket whose bound holds it, and in the sum."""
        series = self._series.get(labels)
        if series is None:
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {labels}")
            series = self._series[labels] = _Observed(len(self.bounds))
        series.sum += amount
        for i, bound in enumerate(self.bounds):
            if amount <= bound:
                series.counts[i] += 1
                break

    def family(self, created: bool = True) -> Metric:
        """The family as ``prometheus_client.Histogram`` would collect it."""
        from prometheus_client.metrics_core import Metric
        from prometheus_client.utils import floatToGoString

        metric = Metric(self.name, self.documentation, "histogram")
        les: list[str] = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        for labels, series in self._series.items():
            named = dict(zip(self.labelnames, labels, strict=True))
            cumulative = 0.0
            for le, count in zip(les, series.counts, strict=True):
                cumulative += count
                metric.add_sample(self.name + "_bucket", {**named, "le": le}, cumulative)
            metric.add_sample(self.name + "_count", named, cumulative)
            if self.bounds[0] >= 0:
                metric.add_sample(self.name + "_sum", named, series.sum)
            if created:
                metric.add_sample(self.name + "_created", named, series.created)
        return metric
