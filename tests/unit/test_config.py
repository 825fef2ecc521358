import pytest

from gandist.config import Config, ConfigError, from_dict, load_config, parse_override, to_dict
from gandist.strategy import check_batch
from tests.conftest import ROOT


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.model.arch == "dcgan" and cfg.model.resolution == 32 and cfg.train.loss == "nonsaturating"
    assert cfg.G_opt.betas == (0.5, 0.999)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  kimg: 7\n  batch: 32\nmodel:\n  channels: 3\n")
    cfg = load_config(path, ["train.kimg=9", "G_opt.betas=[0.0, 0.99]", "run_name=abc", "data.xflip=true"])
    assert cfg.train.kimg == 9.0 and isinstance(cfg.train.kimg, float)
    assert cfg.train.batch == 32 and cfg.model.channels == 3
    assert cfg.G_opt.betas == (0.0, 0.99) and cfg.D_opt.betas == (0.5, 0.999)
    assert cfg.run_name == "abc" and cfg.data.xflip is True


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.kimgs=3", ["unknown key", "train.kimgs", "kimg"]),
        ("nope=1", ["unknown key", "nope"]),
        ("train.batch=abc", ["train.batch", "abc", "int"]),
        ("train.batch=1.5", ["train.batch", "1.5"]),
        ("model.resolution=48", ["model.resolution", "48", "power of two"]),
        ("model.resolution=256", ["model.resolution", "256", "stylegan2 goes to 1024"]),
        ("model.channel_base=16384", ["model.channel_base", "16384", "stylegan2 only"]),
        ("model.mapping_layers=0", ["model.mapping_layers", "positive"]),
        ("model.channels=2", ["model.channels", "2"]),
        ("train.loss=wasserstein", ["train.loss", "wasserstein", "nonsaturating"]),
        ("train.kimg=0", ["train.kimg", "0"]),
        ("G_opt.betas=[0.5]", ["G_opt.betas"]),
        ("D_opt.lr=-1", ["D_opt.lr", "-1"]),
        ("train", ["key=value"]),
        ("model=3", ["model", "mapping"]),
    ],
)
def test_bad_overrides_name_key_and_value(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_stylegan2_goes_to_1024_px_with_its_channel_schedule():
    cfg = load_config(None, ["model.arch=stylegan2", "model.resolution=1024", "model.channel_base=32768"])
    assert cfg.model.resolution == 1024 and cfg.model.channel_max == 512
    with pytest.raises(ConfigError, match="model.resolution"):
        load_config(None, ["model.arch=stylegan2", "model.resolution=2048"])


def test_bad_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.batchsize"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_batch_must_divide_by_world_size():
    cfg = load_config(None, ["train.batch=64"])
    check_batch(cfg.train.batch, 4, 1)
    with pytest.raises(ConfigError, match=r"train\.batch.*64.*3 process\(es\)"):
        check_batch(cfg.train.batch, 3, 1)


def test_override_values_are_yaml():
    assert load_config(None, ["D_opt.lr=1e-3"]).D_opt.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a=hello") == ("a", "hello")
    assert parse_override("a=") == ("a", "")
    assert load_config(None, ["run_name=off", "output_dir=123"]).run_name == "off"  # str fields keep the text
    assert load_config(None, ["output_dir=123"]).output_dir == "123"


def test_round_trip_through_dict():
    cfg = load_config(None, ["train.kimg=3", "model.channels=3"])
    again = from_dict(to_dict(cfg))
    assert again == cfg and isinstance(again, Config)


def test_every_shipped_config_loads():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files
    for path in files:
        load_config(path)
