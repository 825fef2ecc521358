"""The fast path: channels_last and fused Adam resolved per device, torch.compile with an eager fallback, and
glibc's malloc kept from returning memory to the OS on the CPU.

There is no GPU in CI: the "cuda" decisions are tested through the helpers that take the device type.
"""

import subprocess
import sys

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

from gandist.config import ConfigError, OptimizerConfig, StrategyConfig, load_config
from gandist.models import build_models
from gandist.objectives.losses import get_losses
from gandist.reporting.stats import TickStats
from gandist.strategy import Strategy, make_accelerator
from gandist.training.device import resolve_channels_last, resolve_fused, set_up_device, tune_malloc
from gandist.training.optim import make_optimizer
from gandist.training.phases import Phases
from gandist.training.step import first_step_or_eager


def test_defaults_are_auto_and_compile_is_opt_in():
    cfg = load_config()
    assert cfg.train.channels_last == "auto" and cfg.G_opt.fused == "auto" and cfg.D_opt.fused == "auto"
    assert cfg.train.compile is False and cfg.train.compile_backend == "inductor"
    assert cfg.train.malloc_tuning == "auto"


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("auto", "auto"), ("on", True)])
def test_channels_last_takes_booleans_and_auto(value, expected):
    assert load_config(None, [f"train.channels_last={value}"]).train.channels_last == expected
    assert load_config(None, [f"G_opt.fused={value}"]).G_opt.fused == expected
    assert load_config(None, [f"train.malloc_tuning={value}"]).train.malloc_tuning == expected


@pytest.mark.parametrize("key", ["train.channels_last", "D_opt.fused", "train.malloc_tuning"])
def test_bad_auto_values_name_key_and_value(key):
    with pytest.raises(ConfigError, match=rf"{key}.*'sometimes'"):
        load_config(None, [f"{key}=sometimes"])


def test_empty_compile_backend_is_refused():
    with pytest.raises(ConfigError, match="train.compile_backend"):
        load_config(None, ["train.compile=true", "train.compile_backend="])


@pytest.mark.parametrize(
    "setting, device, strategy, expected",
    [
        ("auto", "cuda", "single", True),
        ("auto", "cuda", "ddp", True),
        ("auto", "cpu", "single", False),
        ("auto", "cpu", "ddp", False),
        ("auto", "cuda", "deepspeed", False),  # ZeRO refuses channels_last weights
        (True, "cpu", "single", True),
        (False, "cuda", "ddp", False),
        (False, "cuda", "deepspeed", False),
    ],
)
def test_channels_last_resolution(setting, device, strategy, expected):
    assert resolve_channels_last(setting, device, strategy) is expected


def test_channels_last_true_under_deepspeed_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.channels_last.*deepspeed"):
        resolve_channels_last(True, "cuda", "deepspeed")


@pytest.mark.parametrize(
    "setting, device, expected",
    [("auto", "cuda", True), ("auto", "cpu", False), (True, "cpu", True), (False, "cuda", False)],
)
def test_fused_resolution(setting, device, expected):
    assert resolve_fused(setting, device) is expected


def test_make_optimizer_is_fused_for_cuda_and_default_on_cpu():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert make_optimizer(params, OptimizerConfig(), "cuda").defaults["fused"] is True
    on_cpu = make_optimizer(params, OptimizerConfig(), "cpu").defaults  # exactly torch's defaults, as before
    assert on_cpu["fused"] is None and on_cpu["foreach"] is None
    assert make_optimizer(params, OptimizerConfig(fused=False), "cuda").defaults["fused"] is None


# ----------------------------------------------------------------------------------------------
# torch.compile of the training forwards


def _phases(guard: bool = True) -> Phases:
    torch.manual_seed(0)
    strategy = Strategy(make_accelerator(StrategyConfig()), "fp32")
    G, D = build_models("dcgan", 32, 1, 16, 8, 8)
    strategy.add("G", G, make_optimizer(G.parameters(), OptimizerConfig(), "cpu"))
    strategy.add("D", D, make_optimizer(D.parameters(), OptimizerConfig(), "cpu"))
    return Phases(strategy, *get_losses("nonsaturating"), TickStats(strategy.device), guard=guard)


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(4, 1, 32, 32, generator=gen) * 2 - 1, torch.randn(4, 16, generator=gen), torch.randn(4, 16)


def test_compiled_forwards_train_and_keep_checkpoint_keys():
    phases = _phases()
    s = phases.strategy
    keys = {k: list(v) if isinstance(v, dict) else v for k, v in s.checkpoint_state().items() if k in ("G", "D")}
    s.compile("aot_eager")
    assert s.compiled and s.train_forward("G") is not s.module("G")
    assert s.train_forward("D", eager=True) is s.nets["D"].wrapped  # double backward (R1, GP) stays eager
    before = [p.detach().clone() for p in s.module("G").parameters()]
    said = []
    assert first_step_or_eager(s, lambda: phases.step(*_batch()), said.append)
    assert said == [] and s.compiled
    assert any(not torch.equal(a, b) for a, b in zip(before, s.module("G").parameters()))
    assert {k: list(s.checkpoint_state()[k]) for k in ("G", "D")} == keys  # no _orig_mod. prefixes


def _fails_to_compile(gm, example_inputs):
    raise RuntimeError("stride assertion in a fake kernel (test)")


def _fails_in_backward(gm, example_inputs):
    raise RuntimeError("backward lowering failed (test)")


@pytest.mark.parametrize(
    "backend",
    [_fails_to_compile, aot_autograd(fw_compiler=lambda gm, _: gm, bw_compiler=_fails_in_backward)],
    ids=["compile", "backward"],
)
def test_a_failing_compile_warns_once_and_trains_eager(backend):
    phases = _phases()
    s = phases.strategy
    s.compile(backend)
    before = {name: [p.detach().clone() for p in s.module(name).parameters()] for name in ("G", "D")}
    said = []
    assert first_step_or_eager(s, lambda: phases.step(*_batch()), said.append) is True
    assert len(said) == 1 and "train.compile" in said[0] and "RuntimeError" in said[0] and "\n" not in said[0]
    assert not s.compiled and s.train_forward("G") is s.nets["G"].wrapped
    for name in ("G", "D"):
        assert any(not torch.equal(a, b) for a, b in zip(before[name], s.module(name).parameters()))
    assert phases.step(*_batch())  # and goes on eager


def test_a_failure_without_compile_is_not_swallowed():
    phases = _phases()

    def broken() -> bool:
        raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):
        first_step_or_eager(phases.strategy, broken, print)


# A training step's memory pattern: tensors of several MiB allocated, then all freed; minor page faults over
# the last 10 of 20 such steps, in a fresh process (mallopt is process-wide), with or without train.malloc_tuning.
STEPS = """
import resource, sys, torch
from gandist.training.device import tune_malloc
applied = tune_malloc(sys.argv[1], "cpu") if sys.argv[1] != "off" else False
def step():
    tensors = [torch.ones(n << 18) for n in (40, 4, 8, 8, 6)]  # MiB: glibc always mmaps a block over 32 MiB
    del tensors
for i in range(20):
    if i == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_step(setting: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", STEPS, setting], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_tuning_stops_the_page_faults_of_every_step():
    applied, plain = _faults_per_step("off")
    assert applied == "False" and plain > 10000  # at least the 40 MiB block is faulted in again: 10k pages of 4 KiB
    applied, tuned = _faults_per_step("auto")
    assert applied == "True" and tuned < plain / 20


def test_malloc_tuning_is_left_alone_off_the_cpu_or_when_off():
    assert tune_malloc("auto", "cuda") is False
    assert tune_malloc(False, "cpu") is False


@pytest.fixture
def backend_flags():
    """Restore cudnn.benchmark and the TF32 switches after a test that sets them."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_device_set_up_is_the_loops_and_the_benchmarks(backend_flags):
    t = load_config().train
    torch.backends.cudnn.benchmark = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    assert set_up_device(t, "cpu", "single") is False  # channels_last off on the CPU
    assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
    assert set_up_device(t, "cuda", "ddp") is True  # on for CUDA, with cudnn.benchmark and TF32
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert set_up_device(t, "cuda", "deepspeed") is False
