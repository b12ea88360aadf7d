"""The `otcl` entry point: version, help, `losses`, and the pipeline registry."""

from __future__ import annotations

import importlib
import json

import pytest

from otcl import cli


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and "otcl 0." in capsys.readouterr().out
    for cmd in ("train", "eval", "compare", "losses"):
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        assert "usage: otcl " + cmd in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "usage: otcl" in capsys.readouterr().out


def test_cli_losses_lists_every_loss_with_parameters(capsys):
    import otcl

    assert cli.main(["losses"]) == 0
    text = capsys.readouterr().out
    for name in otcl.losses.available():
        assert f"{name}: " in text
    assert cli.main(["losses", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == set(otcl.losses.available())
    assert info["gca-uot"]["parameters"]["rho"] == {
        "default": 0.2,
        "applies_when": "constraint='unbalanced'",
    }


def test_cli_losses_name_lists_parameters_defaults_and_conditions(capsys):
    assert cli.main(["losses", "gca-ince"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("gca-ince: GCA-INCE")
    rho = next(line for line in lines if line.split()[0] == "rho")
    assert "None" in rho and "only with constraint='unbalanced'" in rho
    assert any(line.split()[:2] == ["iters", "10"] for line in lines[1:])
    assert cli.main(["losses", "dmm", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base"] == "infonce" and info["parameters"]["margin"]["default"] == 0.2
    assert cli.main(["losses", "nope"]) == 2
    assert "otcl: error: name: unknown loss 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--loss", "gca-ince", "--loss-param", "rho=5"], "rho: applies only to constraint="),
        (["--loss", "infonce", "--loss-param", "q=0.3"], "q: applies only to the RINCE"),
        (["--loss", "infonce", "--loss-param", "iters=99"], "iters: applies only to the iter"),
        (["--loss", "ot-hard", "--loss-param", "kappa=2"], "kappa: applies only to cost='exp'"),
        (
            [
                "--loss",
                "infonce",
                "--loss-param",
                "layout=cross",
                "--loss-param",
                "symmetric=maybe",
            ],
            "symmetric: expected a bool (True or False), got 'maybe'",
        ),
        (
            ["--loss", "infonce", "--loss-param", "gather_distributed=maybe"],
            "gather_distributed: expected a bool",
        ),
    ],
)
def test_cli_loss_param_that_does_not_apply_is_one_error_line(argv, message, capsys, tmp_path):
    code = cli.main(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("otcl: error: " + message), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_every_registered_pipeline_adds_its_commands():
    for module in cli.PIPELINES:
        assert callable(importlib.import_module(module).add_parser), module
    parser = cli.build_parser()
    for argv in (["train"], ["eval", "run"], ["compare"], ["losses"]):
        assert callable(parser.parse_args(argv).handler)
    assert parser.parse_args(["train"]).resume_hint == "otcl train --resume {run}"


def test_cli_losses_print_plain_text_not_restructuredtext(capsys):
    import otcl

    for argv in (["losses"], *(["losses", name] for name in otcl.losses.available())):
        assert cli.main(argv) == 0
        text = capsys.readouterr().out
        for markup in ("``", ":math:", ":class:", ":meth:", ":func:", "\\"):
            assert markup not in text, (argv, markup, text)
    assert cli.main(["losses", "ot"]) == 0
    assert capsys.readouterr().out.startswith("ot: Contrastive loss d(P_tgt || P_θ) with P_θ")
