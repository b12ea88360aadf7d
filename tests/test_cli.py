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
    assert info["gca-uot"]["parameters"]["rho"] == 0.2


def test_every_registered_pipeline_adds_its_commands():
    for module in cli.PIPELINES:
        assert callable(importlib.import_module(module).add_parser), module
    parser = cli.build_parser()
    for argv in (["train"], ["eval", "run"], ["compare"], ["losses"]):
        assert callable(parser.parse_args(argv).handler)
    assert parser.parse_args(["train"]).resume_hint == "otcl train --resume {run}"
