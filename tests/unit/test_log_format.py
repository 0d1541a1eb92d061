"""`--log-format json`: one JSON object per line, for log shippers."""

from __future__ import annotations

import json
import logging

from fedge.cli import _log_level, main
from fedge.log_format import JsonFormatter


def test_a_record_becomes_one_json_line():
    record = logging.LogRecord("aggregator.service", logging.INFO, __file__, 1,
                               "aggregator: round %d opened", (3,), None)
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert (entry["level"], entry["logger"]) == ("INFO", "aggregator.service")
    assert entry["message"] == "aggregator: round 3 opened" and "time" in entry


def test_the_command_sets_level_and_format(tmp_path, capsys):
    root = logging.getLogger()
    before, level = list(root.handlers), root.level  # pytest's own capture handlers
    try:
        assert main(["--log-format", "json", "status", "--db", str(tmp_path / "x")]) == 2
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.INFO  # a gateway command says what it does
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before:
            root.addHandler(handler)
        root.setLevel(level)

    class Args:
        quiet, verbose, command = False, False, "demo"
    assert _log_level(Args()) == logging.WARNING  # the demo draws a progress bar
    Args.quiet, Args.command = True, "device"
    assert _log_level(Args()) == logging.WARNING
