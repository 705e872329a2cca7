import pytest

from medclf.config import Config, parse_overrides, user_settings, validate
from medclf.errors import ConfigError


def resolve(config_file=None, overrides=None):
    """The user's settings validated without a dataset plan (defaults for the rest)."""
    return validate(user_settings(config_file, overrides))



def test_overrides_are_parsed_as_yaml_values():
    tree = parse_overrides(["train.lr=3e-4", "model.filters=[8,16]", "augment.enabled=false",
                            "model.name=resnet18"])
    assert tree == {"train": {"lr": 3e-4}, "model": {"filters": [8, 16], "name": "resnet18"},
                    "augment": {"enabled": False}}
    cfg = resolve(overrides=["train.lr=3e-4", "model.filters=[8,16]"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.filters == [8, 16]


def test_unknown_key_names_the_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        resolve(overrides=["train.learning_rate=0.1"])
    message = str(err.value)
    assert "train.learning_rate" in message and "unknown key" in message
    assert "lr" in message  # lists what is allowed


def test_bad_value_names_key_value_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        resolve(overrides=["train.optimizer=adamax"])
    message = str(err.value)
    assert "train.optimizer" in message and "adamax" in message and "sgd" in message
    with pytest.raises(ConfigError, match="train.lr"):
        resolve(overrides=["train.lr=-1"])
    with pytest.raises(ConfigError, match="preprocess.percentiles"):
        resolve(overrides=["preprocess.percentiles=[95,5]"])


def test_malformed_set_and_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        resolve(config_file=bad)
    with pytest.raises(ConfigError, match="not found"):
        resolve(config_file=tmp_path / "missing.yaml")


def test_resolved_tree_round_trips():
    cfg = resolve(overrides=["seed=7", "train.schedule=cosine"])
    again = validate(cfg.to_dict())
    assert again == cfg
    assert Config().to_dict()["train"]["monitor"] == "val_roc_auc"
