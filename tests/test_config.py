"""Config values are coerced to their declared field types wherever configs are built."""

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from robot_pref.config import add_command, from_dict, parse_overrides, to_dict
from robot_pref.feedback.config import LabelConfig
from robot_pref.feedback.labelers import Secret
from robot_pref.feedback.vlm import VLMLabeler


@dataclass
class Inner:
    rate: float = 1.0
    shape: tuple[int, ...] = (84, 84)


@dataclass
class Outer:
    steps: int = 10
    scale: float | None = None
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    name: str = ""
    names: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def test_from_dict_coerces_to_the_declared_types():
    cfg = from_dict(Outer, {"steps": "12", "scale": 3, "flag": "yes", "mode": "b", "name": 7,
                            "names": ["x", "y"], "inner.rate": 0, "inner": {"shape": [96, 128]}})
    assert cfg.steps == 12 and type(cfg.steps) is int
    assert cfg.scale == 3.0 and type(cfg.scale) is float
    assert cfg.flag is True and cfg.mode == "b" and cfg.name == "7" and cfg.names == ("x", "y")
    assert type(cfg.inner.rate) is float and cfg.inner.shape == (96, 128)
    assert from_dict(Outer, {"scale": None, "steps": 4.0, "names": "p,q", "inner.shape": "1,2"}) == Outer(
        steps=4, scale=None, names=("p", "q"), inner=Inner(shape=(1, 2)))
    # YAML 1.1 reads 1e-3 and 1e6 as strings
    assert from_dict(Outer, {"scale": "1e-3", "steps": "1e6"}) == Outer(scale=0.001, steps=1_000_000)


@pytest.mark.parametrize("values, message", [
    ({"steps": 1.5}, "steps: expected int"), ({"steps": True}, "steps: expected int"),
    ({"steps": "many"}, "steps: expected a whole number, got 'many'"),
    ({"scale": "fast"}, "scale: expected float | None"),
    ({"flag": "maybe"}, "flag: expected a boolean"), ({"flag": 2}, "flag: expected bool"),
    ({"mode": "c"}, r"mode: expected one of \['a', 'b'\], got 'c'"), ({"mode": 1}, "mode: expected one of"),
    ({"inner.rate": [1]}, "inner.rate: expected float"),
    ({"inner.shape": [1, "x"]}, r"inner.shape\[1\]: expected a whole number"), ({"name": None}, "name: expected str"),
    ({"inner": 3}, "inner: expected Inner"), ({"extra": [1]}, "extra: expected dict"),
])
def test_wrong_types_name_the_field(values, message):
    with pytest.raises(ValueError, match="^" + message):
        from_dict(Outer, values)


def test_bad_flag_value_gives_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _cli_config(tmp_path, ["--vlm.temperature", "hot"])
    assert "argument --vlm.temperature: could not convert string to float: 'hot'" in capsys.readouterr().err


def _cli_config(tmp_path, argv, yaml_text=None):
    """The LabelConfig `robot-pref label` builds from flags (and an optional --config file)."""
    parser = argparse.ArgumentParser()
    built = []
    add_command(parser.add_subparsers(), "label", LabelConfig, built.append, help="label")
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        argv = ["--config", str(tmp_path / "c.yaml"), *argv]
    args = parser.parse_args(["label", *argv])
    args._run(args)
    return built[0]


def test_yaml_cli_override_and_saved_json_give_one_cache_key(tmp_path):
    from robot_pref.config import load_yaml

    from_yaml = _cli_config(tmp_path, [], "vlm:\n  temperature: 0\n  max_tokens: 512.0\n")
    from_flag = _cli_config(tmp_path, ["--vlm.temperature", "0"])
    (tmp_path / "run.yaml").write_text("label:\n  vlm:\n    temperature: 0\n")
    from_set = from_dict(LabelConfig, {**load_yaml(tmp_path / "run.yaml")["label"],
                                       **{k.partition(".")[2]: v for k, v in
                                          parse_overrides(["label.vlm.temperature=0"]).items()}})
    reloaded = from_dict(LabelConfig, json.loads(json.dumps(to_dict(from_flag))))
    assert from_yaml == from_flag == from_set == reloaded
    keys = set()
    for cfg in (from_yaml, from_flag, from_set, reloaded):
        assert type(cfg.vlm.temperature) is float and type(cfg.vlm.max_tokens) is int
        keys.add(json.dumps(VLMLabeler(cfg.vlm, "goal", api_key=Secret("k")).settings(), sort_keys=True))
    assert len(keys) == 1


def test_pipeline_fingerprint_is_the_same_for_int_and_float_spellings():
    from robot_pref.pipeline.run import RunConfig, _fingerprint

    a = from_dict(RunConfig, parse_overrides(["label.vlm.temperature=0", "fit_reward.lr=0.0003"])).resolved()
    b = from_dict(RunConfig, {"label": {"vlm": {"temperature": 0.0}}, "fit_reward": {"lr": "3e-4"}}).resolved()
    assert _fingerprint(a.label) == _fingerprint(b.label) and _fingerprint(a.fit_reward) == _fingerprint(b.fit_reward)
    saved = json.loads(json.dumps(dataclasses.asdict(a)))  # what run_dir/config.json holds
    again = from_dict(RunConfig, saved)
    assert again == a and isinstance(again.policies, tuple)
    assert _fingerprint(again.train) == _fingerprint(a.train)
