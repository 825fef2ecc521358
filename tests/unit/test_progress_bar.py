"""Progress: a bar on a terminal that ends exactly at the run's kimg; plain lines anywhere else."""

import io
import warnings

import pytest

from gandist.reporting.progress import Reporter, Steps


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("batch", [64, 48, 96])
def test_the_bar_never_runs_past_its_total(tmp_path, batch):
    reporter = Reporter(tmp_path, total_kimg=40.0, start_kimg=0.0, enabled=True, stream=Terminal())
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
    reporter = Reporter(tmp_path, total_kimg=1.0, start_kimg=0.512, enabled=True, stream=Terminal())
    reporter.advance(0.576)
    assert reporter.bar.n == pytest.approx(0.576)
    reporter.close()


def test_without_a_terminal_each_tick_is_one_plain_line(tmp_path):
    out = io.StringIO()
    reporter = Reporter(tmp_path, total_kimg=2.0, start_kimg=0.0, enabled=True, stream=out)
    assert reporter.bar is None
    for kimg in (0.5, 1.0):
        reporter.advance(kimg)
        reporter.tick({"kimg": kimg, "step": int(kimg * 16), "images_per_s": 321.4, "loss/D": 1.25, "loss/G": 0.5})
    reporter.message("gandist: done")
    reporter.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3 and lines[2] == "gandist: done"
    assert lines[1].startswith("gandist: 1.000/2.000 kimg (50%) | step 16 | 321 img/s | D 1.250 G 0.500 | 0:00:00")
    assert len((tmp_path / "stats.jsonl").read_text().splitlines()) == 2


def test_other_ranks_show_nothing(tmp_path):
    out = Terminal()
    reporter = Reporter(tmp_path, total_kimg=2.0, start_kimg=0.0, enabled=False, stream=out)
    reporter.tick({"kimg": 1.0})
    reporter.message("x")
    assert out.getvalue() == "" and not (tmp_path / "stats.jsonl").exists()


def test_a_finite_job_prints_lines_without_a_terminal_and_a_bar_on_one():
    out = io.StringIO()
    with Steps("reference statistics", 1000, stream=out, every_s=0.0) as steps:
        for _ in range(4):
            steps.update(250)
    lines = out.getvalue().splitlines()
    assert lines[:4] == [f"gandist: reference statistics: {n:,}/1,000 images" for n in (250, 500, 750, 1000)]
    assert lines[4].startswith("gandist: reference statistics: 1,000/1,000 images in ") and len(lines) == 5
    terminal = Terminal()
    with Steps("fakes", None, stream=terminal) as steps:
        steps.update(7)
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    with Steps("fakes", 10, stream=quiet, enabled=False) as steps:
        steps.update(10)
    assert quiet.getvalue() == ""
