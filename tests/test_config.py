"""YAML config validated into pydantic: unknown or mistyped keys name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pathodet.data.config import DataConfig, TilingConfig
from pathodet.training.config import Config, ConfigError, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "run config.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults():
    cfg = load_config()
    assert cfg == Config()
    t = cfg.data.tiling
    assert (t.tile_size, t.stride, t.min_visible) == (800, 300, 0.5)
    assert (cfg.data.root, cfg.data.folds, cfg.data.held_out_fold) == (None, None, 0)


def test_default_yaml_matches_the_models():
    path = REPO / "configs" / "default.yaml"
    raw = yaml.safe_load(path.read_text())
    assert load_config(path) == Config()
    # every key the models know is written out in the file (and no other: it validated)
    assert set(raw["data"]) == set(DataConfig.model_fields)
    assert set(raw["data"]["tiling"]) == set(TilingConfig.model_fields)


def test_values_are_read(tmp_path):
    p = write(
        tmp_path,
        "data:\n  root: /data/digestpath\n  held_out_fold: 3\n"
        "  tiling:\n    tile_size: 512\n    stride: 256\n    min_visible: 0.25\n",
    )
    cfg = load_config(p)
    assert cfg.data.root == Path("/data/digestpath")
    assert cfg.data.held_out_fold == 3
    assert cfg.data.tiling == TilingConfig(tile_size=512, stride=256, min_visible=0.25)


def test_empty_file_is_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "# nothing\n")) == Config()


@pytest.mark.parametrize(
    "text, key",
    [
        ("dataa:\n  root: x\n", "dataa"),
        ("data:\n  rot: x\n", "data.rot"),
        ("data:\n  tiling:\n    tilesize: 512\n", "data.tiling.tilesize"),
        ("data:\n  tiling:\n    tile_size: 512\n    strides: 100\n", "data.tiling.strides"),
        ("train:\n  epoch: 3\n", "train.epoch"),
        ("train:\n  augment:\n    crops: 3\n", "train.augment.crops"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value) == f"{p}: unknown key '{key}'"


@pytest.mark.parametrize(
    "text, key",
    [
        ("data:\n  tiling:\n    tile_size: big\n", "data.tiling.tile_size"),
        ("data:\n  tiling:\n    tile_size: 512.5\n", "data.tiling.tile_size"),
        ("data:\n  tiling:\n    stride: -3\n", "data.tiling.stride"),
        ("data:\n  tiling:\n    tile_size: 0\n", "data.tiling.tile_size"),
        ("data:\n  tiling:\n    min_visible: 1.5\n", "data.tiling.min_visible"),
        ("data:\n  tiling:\n    min_visible: [0.5]\n", "data.tiling.min_visible"),
        ("data:\n  held_out_fold: -1\n", "data.held_out_fold"),
        ("data:\n  tiling: 800\n", "data.tiling"),
        ("data: [1, 2]\n", "data"),
    ],
)
def test_wrong_value_names_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: key '{key}':"), msg


def test_several_errors_are_all_reported(tmp_path):
    p = write(tmp_path, "data:\n  bogus: 1\n  tiling:\n    stride: x\n    other: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert f"{p}: unknown key 'data.bogus'" in lines
    assert f"{p}: unknown key 'data.tiling.other'" in lines
    assert any(line.startswith(f"{p}: key 'data.tiling.stride':") for line in lines)


def test_stride_larger_than_tile_is_an_error(tmp_path):
    p = write(tmp_path, "data:\n  tiling:\n    tile_size: 100\n    stride: 101\n")
    with pytest.raises(ConfigError, match=r"stride \(101\) larger than tiling.tile_size \(100\)"):
        load_config(p)
    ok = write(tmp_path, "data:\n  tiling:\n    tile_size: 100\n    stride: 100\n", "ok.yaml")
    assert load_config(ok).data.tiling.stride == 100


@pytest.mark.parametrize(
    "text, words",
    [
        ("data: [unclosed\n", "invalid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("42\n", "top level must be a mapping"),
    ],  # fmt: skip
)
def test_bad_yaml(tmp_path, text, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value).startswith(f"{p}: ") and words in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "none.yaml")


def test_overrides(tmp_path):
    p = write(tmp_path, "data:\n  tiling:\n    tile_size: 512\n    stride: 256\n")
    cfg = load_config(p, ["data.tiling.stride=128", "data.root=/x y", "data.tiling.min_visible=0"])
    assert cfg.data.tiling == TilingConfig(tile_size=512, stride=128, min_visible=0.0)
    assert cfg.data.root == Path("/x y")
    assert load_config(None, ["data.root="]).data.root is None  # empty value: null


def test_override_errors_name_the_key(tmp_path):
    p = write(tmp_path, "data:\n  tiling:\n    tile_size: 512\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, ["data.tiling.tilesize=3"])
    assert str(info.value) == f"{p} with --set overrides: unknown key 'data.tiling.tilesize'"
    with pytest.raises(ConfigError) as info:
        load_config(p, ["data.tiling.stride=abc"])
    assert str(info.value).startswith(f"{p} with --set overrides: key 'data.tiling.stride':")
    with pytest.raises(ConfigError, match="defaults with --set overrides: unknown key 'nope'"):
        load_config(None, ["nope=1"])
    with pytest.raises(ConfigError, match="'root' is a value, not a section"):
        load_config(None, ["data.root=/a", "data.root.x=1"])


@pytest.mark.parametrize("item", ["no_equals", "=3", " =3"])
def test_override_syntax(item):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides([item])


def test_parse_overrides_types():
    assert parse_overrides(["a.b=14", "c=0.5", "d=true", "e=x=y", "f= text "]) == [
        ("a.b", 14),
        ("c", 0.5),
        ("d", True),
        ("e", "x=y"),
        ("f", "text"),
    ]
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["a=[1"])


def test_assignment_is_validated():
    cfg = load_config()
    with pytest.raises(ValueError):
        cfg.data.tiling.stride = 0
    with pytest.raises(ValueError):
        cfg.data.tiling.unknown = 1


def test_section_with_every_key_commented_out_means_defaults(tmp_path):
    from pathodet.training.config import Config, load_config

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  # root: /somewhere\n")
    assert load_config(path) == Config()


def test_default_yaml_writes_out_the_model_and_loss_sections():
    from pathodet.losses.config import LossConfig
    from pathodet.model.config import ModelConfig

    raw = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    assert set(raw["model"]) == set(ModelConfig.model_fields)
    assert set(raw["loss"]) == set(LossConfig.model_fields)


def test_loss_name_typo_names_the_key(tmp_path):
    import pytest

    from pathodet.training.config import ConfigError

    with pytest.raises(ConfigError, match=r"loss\.name"):
        load_config(None, ["loss.name=dghmm"])
