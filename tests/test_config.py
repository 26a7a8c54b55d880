"""Configs fail fast and clearly; presets load; overrides apply."""
import subprocess
import sys

import pytest

from reference_impl.config import PRESET_DIR, ConfigError, load_config


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert cfg.name == name


def test_overrides_apply_and_coerce():
    cfg = load_config("ci", ["data.resolution=32", "data.world.class_probs=[0.9, 0.1, 0, 0]",
                             "data.world.hq_fraction=1"])
    assert cfg.data.resolution == 32
    assert cfg.data.world.class_probs == [0.9, 0.1, 0.0, 0.0]
    assert cfg.data.world.hq_fraction == 1.0 and isinstance(cfg.data.world.hq_fraction, float)


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 (PyYAML) reads "2e-3" as a string; on the command line it means 0.002
    assert load_config("ci", ["train.lr=2e-3"]).train.lr == 0.002
    assert load_config("ci", ["train.lr=1E4"]).train.lr == 1e4
    with pytest.raises(ConfigError, match="must be of type str"):
        load_config("ci", ["name=1e3"])  # a number where a string belongs is still refused


@pytest.mark.parametrize("override, words", [
    ("data.resolutin=16", ["unknown key data.resolutin", "resolution"]),
    ("bogus=1", ["unknown key bogus", "allowed keys"]),
    ("data.resolution=4", ["data.resolution=4", "[8, 1024]"]),
    ("data.balance=sometimes", ["data.balance='sometimes'", "inverse"]),
    ("data.world.caption_mix=[1, 1]", ["caption_mix", "3 non-negative weights"]),
    ("data.num_train=many", ["data.num_train='many'", "int"]),
    ("data.streaming=3", ["data.streaming=3", "true or false"]),
    ("data.resolution", ["key=value"]),
])
def test_bad_key_or_value_names_key_value_and_allowed(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("ci", [override])
    for w in words:
        assert w in str(err.value), str(err.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*laptop"):
        load_config("no-such-preset")


def test_yaml_file_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\ndata:\n  resolution: 24\n")
    assert load_config(str(p)).data.resolution == 24
    p.write_text("data:\n  colour: red\n")
    with pytest.raises(ConfigError, match="unknown key data.colour"):
        load_config(str(p))


def test_cli_reports_config_error_before_any_work():
    out = subprocess.run([sys.executable, "-m", "reference_impl", "bench", "train", "--config",
                          "ci", "--set", "data.resolutin=16", "--json"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2
    assert "unknown key data.resolutin" in out.stderr
