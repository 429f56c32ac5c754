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
    assert cfg.name == "mine_epochs=7"  # a changed training option names its own run folder


def test_only_changed_training_options_name_a_variant():
    assert load_config("fashion-mnist-cpu").name == "fashion-mnist-cpu"
    same = load_config("fashion-mnist-cpu", text_overrides={"temperature": "0.1",
                                                            "log_every": "5"})
    assert same.name == "fashion-mnist-cpu"  # tau as in the preset; logging is no identity
    cfg = load_config("fashion-mnist-cpu", text_overrides={"temperature": "0.5", "seed": "2",
                                                           "crop_scale": "0.08,1"})
    assert cfg.name == "fashion-mnist-cpu_crop_scale=0.08,1_temperature=0.5_seed=2"
    long = load_config(None, text_overrides={"data": "folder:/" + "x" * 300})
    assert len(long.name) < 120 and "/" not in long.name


def test_a_runs_config_yaml_is_a_valid_config(tmp_path):
    from fastclr.config import save_config
    cfg = load_config("fashion-mnist-cpu", text_overrides={"temperature": "0.5"})
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg  # same options, same name: the same run folder


def test_identity_options_cover_the_model_spec():
    from fastclr.config import identity_options
    from fastclr.spec import EncoderSpec, HeadSpec, option_names
    identity = set(identity_options())
    assert set(option_names(EncoderSpec)) | set(option_names(HeadSpec)) <= identity
    assert {"data", "epochs", "batch_size", "temperature", "seed", "crop_scale"} <= identity
    assert not {"log_every", "checkpoint_every", "knn_every", "threads", "run_dir",
                "data_dir", "eval_batch_size", "allow_change"} & identity


def test_allow_change_names_options():
    assert load_config(None, text_overrides={"allow_change": "epochs, seed"}
                       ).allowed_changes == ("epochs", "seed")
    with pytest.raises(ConfigError, match="did you mean epochs"):
        load_config(None, text_overrides={"allow_change": "epoch"})


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


def test_augment_ops_by_name():
    cfg = load_config(None, text_overrides={"augment": "crop, color", "one_branch": "true"})
    assert cfg.augment_ops == ("crop", "jitter", "gray") and cfg.one_branch
    with pytest.raises(ConfigError, match="unknown augmentation op 'colr'"):
        load_config(None, text_overrides={"augment": "crop,colr"})


def test_every_augmentation_argument_has_an_option():
    import inspect

    from fastclr.augment import SimCLRAugment
    from fastclr.augment.pipeline import augment_from_config
    cfg = load_config("fashion-mnist-cpu", text_overrides={"noise_p": "0.3", "augment": "noise"})
    aug = augment_from_config(cfg, channels=1)
    assert aug.options["noise_p"] == 0.3
    assert set(inspect.signature(SimCLRAugment).parameters) - {"native"} <= \
        set(aug.options) | {"ops", "one_branch"}
    with pytest.raises(ConfigError, match="gray needs colour images"):
        augment_from_config(load_config(None, text_overrides={"augment": "crop,gray"}), 1)


def test_loss_and_norm_rules():
    with pytest.raises(ConfigError, match="semi_hard"):
        load_config(None, text_overrides={"semi_hard": "true"})
    with pytest.raises(ConfigError, match="neither encoder_norm nor head_norm is batch"):
        load_config(None, text_overrides={"bn_groups": "2", "encoder_norm": "layer",
                                          "head_norm": "none"})
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(None, text_overrides={"bn_groups": "3", "batch_size": "256"})
    with pytest.raises(ConfigError, match="unknown loss|must be one of"):
        load_config(None, text_overrides={"loss": "infonce"})


def test_a_preset_extends_another_and_a_cycle_is_one_error(tmp_path):
    from fastclr.config import ConfigError, load_config
    child = tmp_path / "child.yaml"
    child.write_text("extends: fashion-mnist-cpu\ntemperature: 0.5\n")
    cfg, parent = load_config(str(child)), load_config("fashion-mnist-cpu")
    assert cfg.temperature == 0.5 and cfg.epochs == parent.epochs and cfg.name == "child"
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(str(loop))
