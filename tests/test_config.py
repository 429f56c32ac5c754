import pytest
import yaml

from fastclr.config import Config, config_from_dict, list_presets, load_config, options
from fastclr.errors import ConfigError


def test_every_preset_loads_and_validates():
    assert "fashion-mnist-cpu" in list_presets()
    for name in list_presets():
        cfg = load_config(name)
        assert cfg.name == name


def test_every_option_has_help_group_and_a_valid_default():
    for f in options():
        assert f.metadata["help"] and f.metadata["group"]
    Config().validate()


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 3\nbatch_size: 64\ncrop_scale: [0.3, 0.9]\n")
    cfg = load_config(str(path), text_overrides={"epochs": "7"})
    assert (cfg.epochs, cfg.batch_size, cfg.crop_scale) == (7, 64, (0.3, 0.9))
    assert cfg.name == "mine"


@pytest.mark.parametrize("text,message", [
    ("epoch: 3\n", "did you mean epochs"),
    ("epochs: 3.5\n", "epochs must be an integer"),
    ("epochs: true\n", "epochs must be an integer"),
    ("compile: 1\n", "compile must be true or false"),
    ("crop_scale: [0.1]\n", "crop_scale must be two numbers"),
    ("- a\n- b\n", "must be a mapping"),
    ("epochs: [\n", "not valid YAML"),
    ("temperature: .nan\n", "finite"),
])
def test_bad_yaml_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_round_trip_through_a_saved_dict():
    cfg = load_config("fashion-mnist-cpu", text_overrides={"seed": "3"})
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg
