"""The progress bar of tracking.Reporter: it ends exactly at the run's kimg, however many small steps led there."""

import warnings

import pytest

from gandist.reporting.progress import Reporter


@pytest.mark.parametrize("batch", [64, 48, 96])
def test_the_bar_never_runs_past_its_total(tmp_path, batch):
    reporter = Reporter(tmp_path, total_kimg=40.0, start_kimg=0.0, enabled=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm warns "clamping frac to range [0, 1]" past the total
        nimg = 0
        while nimg < 40_000:
            nimg += batch
            reporter.advance(nimg / 1000)
            assert reporter.bar.n <= reporter.bar.total
        reporter.close()
    assert reporter.bar.n == 40.0


def test_a_resumed_bar_starts_where_the_run_stopped(tmp_path):
    reporter = Reporter(tmp_path, total_kimg=1.0, start_kimg=0.512, enabled=True)
    reporter.advance(0.576)
    assert reporter.bar.n == pytest.approx(0.576)
    reporter.close()
