"""Experiment config: YAML files, typed dotted overrides, unknown keys, saving and reloading."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from maxca.errors import MaxcaInputError
from maxca.training.config import (
    ExperimentConfig,
    _read_yaml,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)

from .conftest import REPO, TINY_CONFIG

CONFIGS = REPO / "configs"


def test_shipped_brain_configs_parse() -> None:
    unsup = load_config(CONFIGS / "brain-synth-2mm.yaml")
    semi = load_config(CONFIGS / "brain-synth-2mm-semisup.yaml")
    for cfg in (unsup, semi):
        assert cfg.model.name == "pyramid_small"
        assert cfg.model.config["attention"] == "maxca"
        assert cfg.data.shape == [80, 96, 112]
        assert cfg.loss.similarity == "ncc" and cfg.loss.window == 9
        assert cfg.loss.weights.similarity == 1.0 and cfg.loss.weights.diffusion == 1.0
        assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == pytest.approx(3e-4)
        assert Path(cfg.data.path).is_absolute()
        assert cfg.data.path.endswith("brain-synth-2mm/dataset.json")
        assert cfg.name == CONFIGS.joinpath(cfg.name + ".yaml").stem
    assert unsup.loss.weights.dice == 0.0
    assert semi.loss.weights.dice == 1.0 and semi.loss.dice_labels is None


def test_tiny_config_parses() -> None:
    cfg = load_config(TINY_CONFIG)
    assert cfg.model.config["spatial_dims"] == 2 and cfg.data.shape == [32, 32]
    assert cfg.data.path is None and cfg.device == "cpu" and cfg.name == "tiny-2d"


def test_overrides_are_typed() -> None:
    cfg = load_config(
        TINY_CONFIG,
        [
            "optim.lr=3e-4",
            "model.name=pyramid",
            "budget.steps=50",
            "budget.minutes=1.5",
            "data.shape=80,96,112",
            "data.augment=yes",
            "optim.grad_clip=none",
            "model.config.region=[2, 2]",
            "model.config.heads=4",
            "loss.weights.dice=1",
            "loss.dice_labels=[1,2]",
            "name=0007",
            "data.atlas=2",
        ],
    )
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.model.name == "pyramid"
    assert cfg.budget.steps == 50 and isinstance(cfg.budget.steps, int)
    assert cfg.budget.minutes == 1.5
    assert cfg.data.shape == [80, 96, 112]
    assert cfg.data.augment is True
    assert cfg.optim.grad_clip is None
    assert cfg.model.config["region"] == [2, 2] and cfg.model.config["heads"] == 4
    assert cfg.model.config["enc_channels"] == 4  # untouched keys of the file survive
    assert cfg.loss.weights.dice == 1.0 and cfg.loss.dice_labels == [1, 2]
    assert cfg.name == "0007"  # a string field keeps its text
    assert cfg.data.atlas == 2


def test_yaml_float_without_dot_is_a_float(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\n")  # plain YAML reads this as a string
    assert load_config(path).optim.lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr'; valid keys in 'optim': lr, weight_decay"),
        ("epochs=3", r"unknown config key 'epochs'; valid keys at the top level: model, data"),
        ("loss.weights.dise=1", r"'loss.weights.dise'.*similarity, diffusion, bending, dice"),
        ("optim.lr.x=1", r"'optim.lr' is a value, not a section"),
        ("optim.lr=fast", r"optim.lr must be a number, got 'fast'"),
        ("budget.steps=2.5", r"budget.steps must be an integer"),
        ("optim.schedule=linear", r"optim.schedule must be one of \['constant', 'cosine'"),
        ("data.pairs=all", r"data.pairs must be one of"),
        ("amp=fp8", r"amp must be one of"),
        ("optim.lr", r"override must look like key=value"),
    ],
)
def test_bad_overrides_raise(override: str, pattern: str) -> None:
    with pytest.raises(MaxcaInputError, match=pattern):
        load_config(TINY_CONFIG, [override])


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  shapes: [8, 8]\n")
    with pytest.raises(MaxcaInputError, match=r"unknown config key 'data.shapes'; valid keys"):
        load_config(path)


def test_budget_needs_steps_or_minutes() -> None:
    with pytest.raises(MaxcaInputError, match="budget needs steps or minutes"):
        load_config(None, ["budget.steps=none"])


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(MaxcaInputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(MaxcaInputError, match="invalid YAML"):
        load_config(bad)


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("optim:\n  lr: 1.0e-4\n  weight_decay: 0\n  lr: 1.0e-2\n")
    with pytest.raises(
        MaxcaInputError, match=r"twice\.yaml: key 'lr' given twice \(lines 2 and 4\)"
    ):
        load_config(path)
    path.write_text("model: {name: unet, name: pyramid}\n")  # flow style, one line
    with pytest.raises(MaxcaInputError, match=r"key 'name' given twice \(lines 1 and 1\)"):
        load_config(path)
    path.write_text("optim:\n  lr: 1.0e-4\noptim:\n  lr: 1.0e-3\n")  # a whole section twice
    with pytest.raises(MaxcaInputError, match=r"key 'optim' given twice \(lines 1 and 3\)"):
        load_config(path)


def test_a_merge_key_may_still_be_overridden(tmp_path: Path) -> None:
    """YAML's ``<<`` merge brings keys in that the mapping itself may then set: not a duplicate."""
    path = tmp_path / "merge.yaml"
    path.write_text(
        "x-common: &common {lr: 1.0e-4, weight_decay: 0.5}\noptim:\n  <<: *common\n  lr: 3.0e-4\n"
    )
    raw = _read_yaml(path)
    assert raw["optim"] == {"lr": 3.0e-4, "weight_decay": 0.5}
    assert yaml.safe_load(path.read_text()) == raw  # same as PyYAML's own loader here


def test_relative_data_path_falls_back_to_config_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text("{}")
    path = tmp_path / "cfg" / "x.yaml"
    path.write_text("data:\n  path: ../data/dataset.json\n")
    monkeypatch.chdir(tmp_path / "cfg")  # found relative to the working directory
    assert load_config(path).data.path == str(tmp_path / "data" / "dataset.json")
    monkeypatch.chdir(REPO)  # not there: resolved against the config's folder instead
    assert load_config(path).data.path == str(tmp_path / "data" / "dataset.json")


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG, ["optim.lr=3e-4", "data.path=/x/dataset.json", "amp=bf16"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert yaml.safe_load(text)["optim"]["lr"] == pytest.approx(3e-4)
    again = load_config(tmp_path / "run" / "config.yaml")
    again.name = cfg.name
    assert again == cfg
    # a run directory loads its config.yaml and points run_dir at itself
    from_run = load_config(tmp_path / "run", ["resume=true"])
    assert from_run.run_dir == str((tmp_path / "run").resolve()) and from_run.resume
    assert config_from_dict(cfg.to_dict()) == cfg
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_apply_overrides_does_not_mutate_input() -> None:
    raw = {"optim": {"lr": 0.1}}
    out = apply_overrides(raw, ["optim.lr=0.2"])
    assert raw == {"optim": {"lr": 0.1}}
    assert config_from_dict(out).optim.lr == 0.2


def test_model_config_typo_fails_at_load_naming_the_key(tmp_path: Path) -> None:
    cfg = {
        "model": {"name": "pyramid_small", "config": {"attention": "maxcaa"}},
        "data": {"path": str(tmp_path / "no-such-dataset.json")},  # never read
    }
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(
        MaxcaInputError, match=r"model\.config: attention must be one of .*'maxcaa'"
    ):
        load_config(path)
    with pytest.raises(MaxcaInputError, match=r"model\.config: unknown option\(s\) \['heads_x'\]"):
        load_config(None, ["model.config.heads_x=2"])
    with pytest.raises(MaxcaInputError, match=r"model\.name must be one of .*'pyramidal'"):
        load_config(None, ["model.name=pyramidal"])
    # a valid option passes, for the grid's own number of axes
    ok = load_config(None, ["model.config.attention=window", "data.shape=[16,16]"])
    assert ok.model.config["attention"] == "window"
