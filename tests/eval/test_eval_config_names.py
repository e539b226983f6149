"""Target names become folder names (``--out/<target>/``, ``eval/<target>/`` metrics): every
target, from a YAML file or from the paper's ``--eval-config`` string, passes one name
rule before anything is written or any model loads (issue 25 item 6: a reward key holding
``../`` in an ``--eval-config`` wrote images outside ``--out``)."""

from __future__ import annotations

import pytest

from precise_fast.eval import cli
from precise_fast.eval.jobs import EvalJobError, parse_eval_config
from precise_fast.train.config import ConfigError, check_target_name

from .conftest import TINY_CONFIG

HOSTILE_KEYS = ["../../outside", "a/b", "a\\b", "/abs"]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_eval_config_reward_key_with_a_path_separator_is_refused(key):
    text = '0|precise|0|2|pickscore|{"%s": 1.0}' % key.replace("\\", "\\\\")
    with pytest.raises(EvalJobError, match="letters, digits"):
        parse_eval_config(text)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "x y"])
def test_the_one_name_rule(name):
    with pytest.raises(ConfigError, match="letters, digits"):
        check_target_name(name, "eval.targets[0].name")
    check_target_name("pickscore_precise_eta0_steps20_rm-pickscore", "k")  # the paper's form passes


def test_yaml_target_named_dot_dot_is_refused(tmp_path):
    targets = tmp_path / "t.yaml"
    targets.write_text("- {name: '..'}\n")
    args = cli.build_parser().parse_args(["--config", str(TINY_CONFIG), "--out", str(tmp_path / "out"),
                                          "--targets", str(targets), str(tmp_path)])
    with pytest.raises(SystemExit, match=r"eval\.targets\[0\]\.name"):
        cli.plan(args)


def test_cli_exits_2_with_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from precise_fast.eval import runner

    def must_not_run(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(runner, "run", must_not_run)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main(["--config", str(TINY_CONFIG), "--out", str(out), "--ckpt-base", str(tmp_path),
                  "--eval-config", '0|precise|0|2|pickscore|{"../../outside": 1.0}'])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "../../outside" in err and err.startswith("eval:"), err
    assert not out.exists() and not (tmp_path / "outside").exists()
