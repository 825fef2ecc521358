"""gandist preflight: what a batch script checks before it launches anything."""

import pytest

from gandist.cli import main
from gandist.cli.preflight import check
from gandist.config import ConfigError
from tests.conftest import ROOT

TINY = str(ROOT / "configs/tiny.yaml")


def test_a_good_run_is_described(tiny_shards):
    line = check(TINY, [f"data.shards={tiny_shards}"], world_size=4)
    assert line == "4 process(es), batch 32 (8/rank), 0.256 kimg, 4 shard(s)"
    assert check(TINY, [], world_size=1).endswith("(embedded sample)")


@pytest.mark.parametrize(
    ("config", "overrides", "world_size", "message"),
    [
        (
            TINY,
            ["data.shards=/nonexistent/x-{000000..000003}.tar"],
            1,
            "shard /nonexistent/x-000000.tar does not exist",
        ),
        (TINY, [], 3, "'train.batch' = 32 must divide into 3 process(es)"),
        (TINY, [], 0, "world size must be at least 1, got 0"),
        (str(ROOT / "configs/missing.yaml"), [], 1, "configs/missing.yaml' does not exist"),
        (TINY, ["train.kimg=lots"], 1, "key 'train.kimg' expects float"),
    ],
)
def test_wrong_settings_are_named(config, overrides, world_size, message):
    with pytest.raises(ConfigError) as info:
        check(config, overrides, world_size)
    assert message in str(info.value)


def test_command_line_exit_codes(capsys, tiny_shards):
    assert main(["preflight", "--world-size", "2", "--config", TINY, f"data.shards={tiny_shards}"]) == 0
    assert "gandist preflight: ok: 2 process(es)" in capsys.readouterr().out
    assert main(["preflight", "--world-size", "2", "--config", TINY, "data.shards=/nonexistent/x.tar"]) == 2
    assert "gandist: error: data.shards='/nonexistent/x.tar': shard /nonexistent/x.tar" in capsys.readouterr().err


def test_overrides_and_config_in_any_order(capsys, tiny_shards):
    assert main(["preflight", f"data.shards={tiny_shards}", "--config", TINY, "--world-size", "2"]) == 0
    assert "batch 32 (16/rank)" in capsys.readouterr().out
