"""Shared fixtures and hypothesis profiles.

``book_cls`` runs a test against both the Cython engine and the reference model. If
the engine cannot be imported, its parameter errors (it is never skipped): a missing
build must not pass as green. While the engine is not built,
``pytest tests/test_orders.py -k "not engine"`` runs the model half alone (the other
modules compare the engine with the model, or test engine snapshots, and need it).

Hypothesis profiles, chosen with ``HYPOTHESIS_PROFILE`` (default ``dev``):
``dev`` is quick for local runs, ``ci`` runs 2,000 examples per property.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from support import engine_class, model_class

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=2000,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(params=["engine", "model"])
def book_cls(request):
    """The book implementation under test: each test runs once per implementation."""
    return engine_class() if request.param == "engine" else model_class()
