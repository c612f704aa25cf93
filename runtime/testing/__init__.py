"""Test suites for plugin authors: check a backend against the contract it implements.

* :mod:`runtime.testing.snapshotter`: the snapshotter conformance suite. Load it
  with ``pytest_plugins = ["runtime.testing.snapshotter"]``, provide a
  ``snapshotter`` fixture, and subclass
  :class:`~runtime.testing.snapshotter.SnapshotterConformance`.

Nothing here is imported by the daemon; these modules import pytest.
"""

from __future__ import annotations

import pytest

# A test module imports the suite (to subclass it) before pytest loads it as a
# plugin; registering here, when the package is first imported, lets pytest
# rewrite the suite's asserts into readable failures instead of warning that
# it came too late.
pytest.register_assert_rewrite("runtime.testing.snapshotter", "runtime.testing.snapshot_layers")
