"""Typed config: defaults, YAML and --set overrides, clear errors naming the key."""

from __future__ import annotations

import pytest

from transferlab.config import Config, dump_config, load_config
from transferlab.errors import ConfigError


def test_a_run_without_any_file_gets_the_documented_defaults_and_records_them(tmp_path, monkeypatch):
    """No YAML anywhere (an empty working folder): the defaults the README documents apply, and the
    resolved config.yaml of a run spells every one of them out, so the run can be repeated."""
    import yaml

    monkeypatch.chdir(tmp_path)
    config = load_config()
    documented = {("data", "val_fraction"): 0.15, ("data", "test_fraction"): 0.15, ("preprocess", "normalize"): "model",
                  ("preprocess", "resize_mode"): "crop", ("strategy", "name"): "auto", ("optim", "lr"): 1e-3,
                  ("optim", "name"): "adamw", ("schedule", "name"): "cosine", ("train", "batch_size"): 32,
                  ("train", "monitor"): "val_loss", ("model", "name"): "tf_efficientnet_lite0", ("cv", "folds"): 5}
    for (section, key), value in documented.items():
        assert getattr(getattr(config, section), key) == value, (section, key)
    dump_config(config, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert all(written[section][key] == value for (section, key), value in documented.items())
    assert set(written) == {f.name for f in __import__("dataclasses").fields(Config)}


def test_yaml_then_set_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\ndata:\n  val_fraction: 0.3\npreprocess:\n  size: 64\n")
    config = load_config(path, ["preprocess.size=96", "data.alpha_background=[0, 0, 0]", "data.subset=null"])
    assert config.seed == 7 and config.data.val_fraction == 0.3
    assert config.preprocess.size == 96
    assert config.data.alpha_background == (0, 0, 0)
    assert config.data.subset is None


def test_resolved_config_roundtrips(tmp_path):
    config = load_config(overrides=["preprocess.resize_mode=pad", "data.val_fraction=0.25", "seed=3"])
    dump_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("override,message", [
    ("data.val_fractoin=0.2", "unknown config key 'data.val_fractoin'"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("preprocess.size=big", "'preprocess.size' expects an integer or null"),
    ("data.val_fraction=abc", "'data.val_fraction' expects a number"),
    ("preprocess.resize_mode=squash", "'preprocess.resize_mode' expects one of 'stretch', 'crop', 'pad'"),
    ("data.alpha_background=[1, 2]", "'data.alpha_background' expects a list"),
    ("seed=true", "'seed' expects an integer"),
    ("data=3", "'data' must be a mapping"),
    ("noequals", "not of the form key=value"),
])
def test_override_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(overrides=[override])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  cache: sometimes\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: config key 'data.cache' expects one of"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
