"""The weak-scaling model of benchmarks/scaling.py: its formulas and the 2-process prediction."""

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("scaling", ROOT / "benchmarks" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ring_allreduce_time(scaling):
    B, bw = 8e6, 100e9
    assert scaling.comm_seconds(B, 1, 1, bw, None, 2.0) == 0.0  # one GPU: nothing to exchange
    # 8 GPUs in a node: 2 (g-1)/g of the bytes over the bus, plus 2 (g-1) latency hops
    assert scaling.comm_seconds(B, 8, 1, bw, None, 2.0, latency_s=1e-5) == pytest.approx(2 * 7 / 8 * B / bw + 14e-5)
    # across nodes the NIC adds 2 (n-1)/n of the bytes at its bandwidth; none given: unusable
    two_nodes = scaling.comm_seconds(B, 8, 2, bw, 25e9, 2.0, latency_s=0.0)
    assert two_nodes == pytest.approx(2 * 7 / 8 * B / bw + 2 * 1 / 2 * B / 25e9)
    assert math.isinf(scaling.comm_seconds(B, 8, 2, bw, None, 2.0))


def test_efficiency_falls_with_nodes_and_zero3_volume(scaling):
    params = (3_576_704, 2_765_568)
    eff = [scaling.efficiency(0.0153, params, 8, n, 450e9, 25e9, "ddp", 0.0) for n in (1, 2, 8, 64)]
    assert all(0 < e <= 1 for e in eff) and eff == sorted(eff, reverse=True)
    zero3 = scaling.efficiency(0.0153, params, 8, 8, 450e9, 25e9, "zero3", 0.0)
    assert zero3 < eff[2]  # stage 3 also gathers parameters: 1.5x the bytes of DDP
    hidden = scaling.efficiency(0.0153, params, 8, 8, 450e9, 25e9, "ddp", 0.5)
    assert eff[2] < hidden < 1


def test_allreduce_fit_recovers_latency_and_bandwidth(scaling):
    times = {b: 2e-4 + b / 1.5e9 for b in (4, 1 << 18, 1 << 21, 1 << 23)}
    latency, bandwidth = scaling.fit_allreduce(times)
    assert latency == pytest.approx(2e-4, rel=1e-6)
    assert bandwidth == pytest.approx(1.5e9, rel=1e-6)


def test_ddp_bucket_count(scaling):
    assert scaling.ddp_buckets(4 * 1000) == 1
    assert scaling.ddp_buckets(4 * 1_068_928) == 2  # DCGAN 32 px G: 1 MiB first bucket + the rest
    assert scaling.ddp_buckets(60 << 20) == 4  # 1 MiB, then 25 + 25 + 9


def test_prediction_adds_stragglers_and_communication(scaling):
    alone = {"segments": [[0.05, 0.05]] * 4}
    a = {"segments": [[0.05, 0.05], [0.07, 0.05], [0.05, 0.05], [0.07, 0.05]]}
    b = {"segments": [[0.07, 0.05], [0.05, 0.05], [0.07, 0.05], [0.05, 0.05]]}
    assert scaling.mean_step(a) == pytest.approx(0.11)
    assert scaling.synced_step([a, b]) == pytest.approx(0.12)  # each stretch waits for the slower rank
    # stragglers in different stretches of a step each cost a wait: 0.12, not max(0.12, 0.12)
    c, d = {"segments": [[0.07, 0.05]]}, {"segments": [[0.05, 0.07]]}
    assert scaling.synced_step([c, d]) == pytest.approx(0.14)
    assert scaling.synced_step([a, a]) == pytest.approx(scaling.mean_step(a))
    allreduce = {b: 1e-3 + b / 1e9 for b in (4, 1 << 20, 1 << 23)}
    got = scaling.predict(alone, [a, b], allreduce, (1000, 1000))
    assert got["compute_s"] == pytest.approx(0.11)
    assert got["sync_s"] == pytest.approx(0.01)
    calls = 2 + scaling.DDP_FORWARDS_PER_STEP  # one bucket per net, one buffer broadcast per DDP forward
    assert got["comm_s"] == pytest.approx(2 * 4000 / 1e9 + calls * 1e-3, rel=1e-6)
    assert got["predicted_overhead"] == pytest.approx((0.12 + got["comm_s"]) / 0.10 - 1)
