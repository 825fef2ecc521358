"""`pip install gandist` without extras: no DeepSpeed, and a DCGAN run that prints no DeepSpeed line.

The fresh environment gets exactly what a user's `pip install .` gets (CPU torch pinned as in CI). To stay
within about a minute and a half on 2 cores: the wheel is built once with this venv's setuptools (no
isolated build environment), pip drives the new interpreter from here (`--python`, so the new venv needs no
pip of its own), and nothing is byte-compiled. Packages come from pip's cache where CI's own install left
them; the package index is asked for the rest, so this test needs the registry or a warm cache.
"""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run

pytestmark = [pytest.mark.slow, pytest.mark.install]

TORCH = "torch==" + __import__("torch").__version__.split("+")[0]


def _fresh_install(tmp_path):
    """A venv holding `pip install <gandist wheel>` and its dependencies only; returns its bin folder."""
    src = tmp_path / "src"  # build outside the work tree: no build/ or egg-info left there
    shutil.copytree(ROOT / "gandist", src / "gandist", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(src)])
    (wheel,) = (tmp_path / "wheel").glob("gandist-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    constraints = ["-c", str(ROOT / ".ci/constraints.txt")]
    run([*pip, "--python", str(venv / "bin/python"), "install", "-q", "--no-compile", *constraints, TORCH, str(wheel)])
    return venv / "bin"


def test_a_plain_install_has_no_deepspeed_and_a_dcgan_run_prints_no_deepspeed_line(tmp_path):
    bin_dir = _fresh_install(tmp_path)
    python = str(bin_dir / "python")
    found = run([python, "-c", "import importlib.util as u; print(u.find_spec('deepspeed') is None)"])
    assert found.stdout.strip() == "True"

    env = {"HOME": str(tmp_path), "WANDB_API_KEY": None, "WANDB_MODE": None}  # no tracker: nothing else to say
    tiny = ["--config", str(ROOT / "configs/tiny.yaml"), f"output_dir={tmp_path / 'runs'}"]
    proc = run([str(bin_dir / "gandist"), "train", *tiny, "run_name=plain", "train.max_steps=2"], env=env)
    output = proc.stdout + proc.stderr
    assert "gandist: done" in output
    assert "deepspeed" not in output.lower() and "[WARNING]" not in output

    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    asked = subprocess.run(
        [str(bin_dir / "gandist"), "train", *tiny, "run_name=ds", "strategy.name=deepspeed"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, "HOME": str(tmp_path)},
    )
    assert asked.returncode == 2
    (line,) = asked.stderr.strip().splitlines()
    assert line.startswith("gandist: error: ") and "pip install 'gandist[deepspeed]'" in line
