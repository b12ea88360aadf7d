"""The `otcl` entry point: version, help, `losses`, and the pipeline registry."""

from __future__ import annotations

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
    """Every pipeline has the same three verbs, generated from its spec; the image
    pipeline's are also the short forms otcl train | eval | compare."""
    from otcl.pipelines.spec import get

    parser = cli.build_parser()
    for name in cli.PIPELINES:
        assert get(name).name == name
        for verb in (["train"], ["eval", "run"], ["compare"]):
            args = parser.parse_args([name, *verb])
            assert callable(args.handler) and args.pipeline == name
        assert (
            parser.parse_args([name, "train"]).resume_hint == f"otcl {name} train --resume {{run}}"
        )
    for argv in (["train"], ["eval", "run"], ["compare"], ["losses"]):
        assert callable(parser.parse_args(argv).handler)
    assert parser.parse_args(["train"]).resume_hint == "otcl train --resume {run}"


@pytest.mark.parametrize("name", ["ssl", "multimodal", "recsys"])
def test_each_verb_offers_only_what_it_accepts(name, capsys, monkeypatch):
    """train offers --dmm and KEY=VALUE (no LOSS: prefix), compare [LOSS:]KEY=VALUE, --methods
    and --jobs; eval none of the run settings."""
    monkeypatch.setenv("COLUMNS", "1000")
    helps = {}
    for verb in ("train", "eval", "compare"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([name, verb, "--help"])
        helps[verb] = capsys.readouterr().out
    assert "--dmm" in helps["train"] and "[LOSS:]" not in helps["train"]
    assert "KEY=VALUE" in helps["train"]
    assert "[LOSS:]KEY=VALUE" in helps["compare"] and "--jobs" in helps["compare"]
    assert "--methods" in helps["compare"] and "--dmm" not in helps["compare"]
    assert "--loss-param" not in helps["eval"] and "--epochs" not in helps["eval"]
    assert ("--compile" in helps["train"]) == (name != "multimodal")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["multimodal", "train", "--compile"], "--compile: not supported by this pipeline"),
        (["multimodal", "compare", "--dmm", "both"], "--dmm: moved: name the methods"),
    ],
)
def test_refused_flags_are_one_line_at_parse_time(argv, match, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"otcl: error: {match}") and err.count("\n") == 1, err


def test_cli_losses_print_plain_text_not_restructuredtext(capsys):
    import otcl

    for argv in (["losses"], *(["losses", name] for name in otcl.losses.available())):
        assert cli.main(argv) == 0
        text = capsys.readouterr().out
        for markup in ("``", ":math:", ":class:", ":meth:", ":func:", "\\"):
            assert markup not in text, (argv, markup, text)
    assert cli.main(["losses", "ot"]) == 0
    assert capsys.readouterr().out.startswith("ot: Contrastive loss d(P_tgt || P_θ) with P_θ")


def test_a_closed_output_pipe_is_quiet_but_another_broken_pipe_is_an_error(capsys, monkeypatch):
    """``otcl losses | head``: the reader left, exit 0 and nothing said. A broken pipe of the
    command's own (e.g. to a worker process) is a failure: one line, exit 1, never 0."""
    import subprocess
    import sys

    code = "import sys; from otcl.cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "losses", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # before otcl writes anything: its writes meet a closed pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == ""

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_losses", broken)
    assert cli.main(["losses"]) == 1
    assert capsys.readouterr().err == "otcl: error: Broken pipe\n"
