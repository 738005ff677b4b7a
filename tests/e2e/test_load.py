"""Load: 50 streaming clients and 500 queued batch jobs on the tiny GGUF, every job and key audited.

The load and the audit are scripts/soak.py's, so the soak script and this test cannot drift
apart; the soak runs the same thing for as long as one likes.
"""

from __future__ import annotations

import pytest
from conftest import Stack
from soak import run_soak

pytestmark = pytest.mark.e2e

STREAMS = 50
BATCH = 500


def test_every_job_ends_once_with_the_text_its_client_got_and_leaves_no_key(stack: Stack) -> None:
    # A few seconds: each stream runs several jobs back to back while the 500 batch jobs wait
    # behind them (interactive is served first), then the batch drains.
    report = run_soak(stack.url, duration=4.0, streams=STREAMS, batch=BATCH, settle_timeout=120.0)
    summary = report.summary()
    print(summary)

    assert report.batch_jobs == BATCH and report.not_submitted == 0, summary
    assert len(report.calls_per_stream) == STREAMS and min(report.calls_per_stream) >= 1, summary
    assert report.lost == 0, summary
    assert report.failed == 0, summary
    # Nothing cancels in a clean run: every client waits for its job, and no job has a deadline.
    assert report.canceled == 0, summary
    assert report.finished == report.total == report.stream_jobs + BATCH, summary
    assert report.client_errors == {}, summary
    assert report.mismatches == [], summary
    assert report.exactly_once_violations == [], summary
    assert report.leftover_keys == [], summary
