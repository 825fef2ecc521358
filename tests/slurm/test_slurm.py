"""slurm/ batch scripts, run for real: a two-node SLURM cluster on this machine (cluster.py), CPU, gloo.

The cluster's nodes have one CPU and one GPU as a count only, so `--gpus-per-node=1` gives one
training process per node; torch sees no CUDA and trains on the CPU.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tests.slurm.cluster import LocalSlurm, missing_binaries

SCRIPTS = [ROOT / "slurm/train.sbatch", ROOT / "slurm/train_multinode.sbatch", ROOT / "slurm/job.sh"]
TINY = ["--config", "configs/tiny.yaml"]


def test_scripts_parse_and_pass_shellcheck():
    for script in SCRIPTS:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"bash -n {script}: {proc.stderr}"
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck); bash -n passed")
    # -x follows `source slurm/job.sh`; run from the root, where that path is
    proc = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout


def _bash_script(env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    return subprocess.run(
        ["bash", str(ROOT / "slurm/train_multinode.sbatch"), *TINY],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**clean, "GANDIST_DIR": str(ROOT), **env},
    )


def test_outside_slurm_or_without_nodes_the_script_stops_before_launching(tmp_path):
    proc = _bash_script({}, tmp_path)
    assert proc.returncode == 2 and "not inside a SLURM job: submit with sbatch" in proc.stderr
    proc = _bash_script({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "NODES": "0"}, tmp_path)
    assert proc.returncode == 2 and "NODES='0'" in proc.stderr and "at least 1" in proc.stderr
    proc = _bash_script({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "NODES": "3"}, tmp_path)
    assert proc.returncode == 2 and "NODES=3 but this job has 2 node(s)" in proc.stderr
    assert not list(tmp_path.iterdir())  # no run folder, no log: nothing was started


# --- on the cluster -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM is not installed (missing {missing}): apt-get install slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs slurmd, which needs root")
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def _submit(cluster: LocalSlurm, tmp_path: Path, script: str, *args: str, flags=(), env: dict | None = None) -> str:
    """sbatch `flags` slurm/`script` `args` with the test's environment; return the job id."""
    job_env = {
        "GANDIST_DIR": str(ROOT),
        "VENV": sys.prefix,  # this test's virtual environment
        "OUTPUT_DIR": str(tmp_path / "runs"),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "disabled",
        **(env or {}),
    }
    return cluster.sbatch(
        f"--output={tmp_path}/%x-%j.out",
        "--gpus-per-node=1",
        "--time=10",
        *flags,
        str(ROOT / "slurm" / script),
        *args,
        env=job_env,
        cwd=tmp_path,
    )


def _log(tmp_path: Path, job: str) -> str:
    return (tmp_path / f"gandist-{job}.out").read_text(errors="replace")


def _wait_for_first_tick(cluster: LocalSlurm, run_dir: Path, job: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "stats.jsonl").is_file() and (run_dir / "stats.jsonl").read_text().strip():
            return
        state = cluster.job(job)["JobState"]
        assert state in {"PENDING", "RUNNING", "CONFIGURING"}, f"job {job} is {state} before its first tick"
        time.sleep(0.2)
    raise AssertionError(f"job {job} wrote no stats in {timeout} s")


def _ranks_by_node(cluster: LocalSlurm, job: str) -> dict[int, str]:
    """RANK -> SLURM node name of the running training processes of `job`, read from their environment."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "gandist/train.py" not in " ".join(proc.info["cmdline"] or []):
                continue
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if env.get("SLURM_CONF") == str(cluster.conf) and env.get("SLURM_JOB_ID") == job and "RANK" in env:
            found[int(env["RANK"])] = env["SLURMD_NODENAME"]
    return found


def _check_stopped_and_resumed(run_dir: Path, log: str, kimg: float, world_size: int) -> None:
    """One early stop at a checkpoint, one requeue, a second run (restart 1) that resumed from it and finished."""
    stopped = re.search(r"gandist: stopped early \((.*?)\) at ([\d.]+) kimg; checkpoint (\S+)", log)
    assert stopped, log[-3000:]
    assert "STOP" in stopped.group(1)  # the batch shell's trap asked for it
    stop_kimg, stop_checkpoint = float(stopped.group(2)), stopped.group(3)
    assert f"resumed from {stop_checkpoint}" in log
    lines = (run_dir / "slurm_jobs.log").read_text().splitlines()
    events = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in lines]
    expected = [("0", "start"), ("0", "requeue"), ("1", "start"), ("1", "end")]
    assert [(e["restart"], e["event"]) for e in events] == expected
    assert events[-1]["rc"] == "0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == world_size and summary["params_in_sync"]
    assert summary["kimg"] >= kimg and not summary["stopped_early"]
    ticks = [json.loads(line)["kimg"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)  # no tick replayed: kimg continued
    assert 0 < stop_kimg < kimg and any(stop_kimg < t < kimg for t in ticks)
    assert not (run_dir / "REQUEUE").exists() and not (run_dir / "STOP").exists()


@pytest.mark.slow
def test_bad_data_path_or_zero_nodes_fail_the_job_before_launching(cluster, tmp_path):
    missing = "/nonexistent/shards/x-{000000..000003}.tar"
    bad_data = _submit(cluster, tmp_path, "train.sbatch", *TINY, env={"DATA": missing})
    no_nodes = _submit(cluster, tmp_path, "train.sbatch", *TINY, env={"NODES": "0"})
    for job in (bad_data, no_nodes):
        info = cluster.wait_for(job, {"FAILED"}, timeout=90)
        assert info["ExitCode"] == "2:0"
        assert "accelerate" not in _log(tmp_path, job) and "gandist: run" not in _log(tmp_path, job)
    assert "shard /nonexistent/shards/x-000000.tar does not exist" in _log(tmp_path, bad_data)
    assert f"DATA={missing}" in _log(tmp_path, bad_data)
    assert "NODES='0'" in _log(tmp_path, no_nodes) and "need a node count of at least 1" in _log(tmp_path, no_nodes)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_nodes_train_checkpoint_on_the_warning_signal_requeue_and_resume(cluster, tmp_path):
    kimg = 6.0  # ~6 s of training on 2 CPU processes: time enough to signal the first run after its first tick
    job = _submit(
        cluster,
        tmp_path,
        "train_multinode.sbatch",
        *TINY,
        f"train.kimg={kimg}",
        "train.snapshot_kimg=2",
        "faults.check_every=2",
    )
    run_dir = tmp_path / "runs" / f"gandist-{job}"
    _wait_for_first_tick(cluster, run_dir, job)
    placement = _ranks_by_node(cluster, job)
    cluster.scancel("--signal=USR2", "--batch", job)  # what --signal=B:USR2@N sends before the time limit
    assert placement.keys() == {0, 1} and set(placement.values()) == {"gnode1", "gnode2"}, placement

    info = cluster.wait_for(job, {"COMPLETED"}, timeout=240)
    log = _log(tmp_path, job)
    assert info["Restarts"] == "1", info
    assert "got SIGUSR2" in log
    assert f"job {job} restart 1 | 2 node(s) x 1 process(es) on gnode[1-2]" in log  # SLURM_RESTART_COUNT=1
    _check_stopped_and_resumed(run_dir, log, kimg, world_size=2)


@pytest.mark.slow
def test_preempted_by_a_higher_priority_partition_requeues_and_resumes(cluster, tmp_path):
    kimg = 6.0
    job = _submit(
        cluster,
        tmp_path,
        "train.sbatch",
        *TINY,
        f"train.kimg={kimg}",
        "train.snapshot_kimg=2",
        "faults.check_every=2",
        flags=["--partition=low", "--nodelist=gnode1"],
    )
    run_dir = tmp_path / "runs" / f"gandist-{job}"
    _wait_for_first_tick(cluster, run_dir, job)
    urgent = cluster.sbatch(
        "--partition=high", "--nodelist=gnode1", f"--output={tmp_path}/urgent-%j.out", "--wrap", "sleep 2"
    )
    urgent_info = cluster.wait_for(urgent, {"COMPLETED"}, timeout=120)
    info = cluster.wait_for(job, {"COMPLETED"}, timeout=240)
    log = _log(tmp_path, job)
    assert info["Restarts"] == "1" and info["Partition"] == "low", info
    assert "got SIGUSR2" in log  # preempt_send_user_signal: the job's --signal, at preemption
    assert f"job {job} restart 1 | 1 node(s) x 1 process(es) on gnode1" in log
    assert urgent_info["StartTime"] < info["StartTime"]  # the urgent job ran in between
    _check_stopped_and_resumed(run_dir, log, kimg, world_size=1)
