"""`fedge` builds only the named command's parser, yet help and errors list every command."""

from __future__ import annotations

import pytest

from fedge.cli import COMMANDS, main

NAMES = [name for name, _ in COMMANDS]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)


@pytest.mark.parametrize("argv", [["devic"], ["-q", "bundel"], []])
def test_an_unknown_or_missing_command_names_them_all(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "{" + ",".join(NAMES) + "}" in err


@pytest.mark.parametrize("argv", [["device", "--help"], ["-v", "--log-format", "json",
                                                         "device", "--help"]])
def test_a_command_after_the_global_options_gets_its_own_help(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: fedge device [-h] --config CONFIG" in capsys.readouterr().out
