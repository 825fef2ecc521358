"""Stopping a benchmark stops its `gandist train` child cleanly: a checkpoint, no orphan, a clear message.

Each benchmark here trains the default configuration (embedded data, loader workers on) with small nets, through
the benchmark's own function that runs gandist, and is stopped as a user or a scheduler stops it.
"""

import signal
import textwrap
from pathlib import Path

import pytest

from gandist.training import checkpoint
from gandist.training.stopping import REQUEUE_MARKER
from tests.conftest import PYTHON, ROOT
from tests.processes import finish, signal_group, start, stats, summary, wait_for

pytestmark = pytest.mark.slow

SMALL = "model:\n  g_width: 16\n  d_width: 16\ntrain:\n  tick_kimg: 0.128\n"
CALLS = {  # a benchmark's function that trains with gandist, on the embedded data, to a budget it will not reach
    "quality": "module.gandist_run('r', CONFIG, str(EMBEDDED_DIR), 50, WORK, [])",
    "augmentation": "module.train_gan(module.Commands(WORK), 'r', CONFIG, EMBEDDED_DIR, 50, [])",
}


def _benchmark(tmp_path: Path, name: str) -> list[str]:
    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    script = textwrap.dedent(f"""
        import importlib.util, sys
        from pathlib import Path
        from gandist.data.specs import EMBEDDED_DIR
        sys.argv[0] = "{name}.py"
        spec = importlib.util.spec_from_file_location("{name}", "{ROOT / "benchmarks" / f"{name}.py"}")
        module = sys.modules["{name}"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        CONFIG, WORK = Path("{config}"), Path("{tmp_path}")
        {CALLS[name]}
        print("benchmark: training returned")
    """)
    return [PYTHON, "-c", script]


def _processes_naming(text: str) -> list[int]:
    """PIDs of the live processes whose command line contains `text`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


@pytest.mark.parametrize(
    "name, sig, to_group",
    [("quality", signal.SIGTERM, False), ("augmentation", signal.SIGTERM, False), ("quality", signal.SIGINT, True)],
    ids=["quality-sigterm-to-benchmark", "augmentation-sigterm-to-benchmark", "quality-ctrl-c"],
)
def test_a_stopped_benchmark_leaves_its_training_checkpointed_and_not_running(tmp_path, name, sig, to_group):
    run_dir, log = tmp_path / "runs" / "r", tmp_path / "log"
    proc = start(_benchmark(tmp_path, name), log)
    wait_for(lambda: stats(run_dir) or proc.poll() is not None, 180, "the first tick")
    assert proc.poll() is None, log.read_text()[-3000:]
    if to_group:  # Ctrl-C in a terminal: the whole foreground group
        signal_group(proc, sig)
    else:  # `kill PID` or a scheduler: the benchmark's process alone
        proc.send_signal(sig)
    output = finish(proc, log, 120)
    assert proc.returncode == 128 + sig, output[-3000:]
    assert f"{name}: {sig.name}: stopped" in output and "run the same command again to continue" in output
    assert "Traceback" not in output and "training returned" not in output, output[-3000:]
    assert not _processes_naming(str(run_dir.parent)), "gandist train still runs after its benchmark stopped"
    done = summary(run_dir)
    assert done["stopped_early"] and (run_dir / REQUEUE_MARKER).is_file()
    assert checkpoint.latest_checkpoint(run_dir).name == f"step-{done['step']:09d}"
