"""The config explains itself: `gandist config` lists keys with type, default and meaning; --print-config is
commented YAML that loads back to the same config."""

import dataclasses

import pytest
import yaml

from gandist.cli import main
from gandist.config import Config, apply_file, load_config, to_dict
from gandist.config_docs import commented_yaml, field_docs, keys
from tests.conftest import ROOT


def test_every_config_field_has_a_docstring():
    def classes(obj):
        yield type(obj)
        for f in dataclasses.fields(obj):
            if dataclasses.is_dataclass(getattr(obj, f.name)):
                yield from classes(getattr(obj, f.name))

    for cls in set(classes(Config())):
        plain = [f.name for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(getattr(cls(), f.name))]
        missing = [name for name in plain if not field_docs(cls).get(name)]
        assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"
    assert len(keys()) > 90 and all(k.doc for k in keys())


def test_the_listing_shows_a_key_with_type_default_and_meaning(capsys):
    assert main(["config", "train.kimg"]) == 0
    out = capsys.readouterr().out
    assert "train.kimg: float = 40.0" in out and "Budget: thousands of real images shown to D." in out
    assert "train.batch" not in out


def test_a_section_listing_with_a_config_file_shows_values_and_defaults(capsys):
    assert main(["config", "model", "--config", str(ROOT / "configs/fashion_mnist_best.yaml"), "model.z_dim=7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: What G and D are.")
    assert "model.arch: one of 'dcgan', 'resnet', 'stylegan2' = resnet (default dcgan)" in out
    assert "model.z_dim: int = 7 (default 100)" in out and "model.resolution: int = 32\n" in out
    assert "train." not in out


@pytest.mark.parametrize(("name", "hint"), [("trian", "did you mean 'train'?"), ("kimg", "did you mean 'train.kimg'?")])
def test_an_unknown_name_is_one_line_with_a_suggestion(capsys, name, hint):
    assert main(["config", name]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"gandist: error: no config key or section {name!r}") and hint in line


def test_printed_config_is_commented_and_loads_back(tmp_path, capsys):
    assert main(["train", "--config", str(ROOT / "configs/fashion_mnist_best.yaml"), "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "  # Budget: thousands of real images shown to D. (float)\n  kimg: " in text
    assert "# The schedule, the loss and the numerics of training.\ntrain:\n" in text
    saved = tmp_path / "printed.yaml"
    saved.write_text(text)
    expected = load_config(ROOT / "configs/fashion_mnist_best.yaml")
    assert yaml.safe_load(text) == to_dict(expected)
    assert to_dict(apply_file(Config(), saved)) == to_dict(expected)


def test_commented_yaml_of_unusual_values_loads_back():
    cfg = load_config(
        None,
        ["run_name=off", "tracking.tags=[a,b]", "strategy.zero_stage=null", "data.shards=a:b,c", "train.lr_final=1e-3"],
    )
    assert yaml.safe_load(commented_yaml(cfg)) == to_dict(cfg)
