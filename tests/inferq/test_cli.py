"""The ``inferq`` entry: ``--help`` lists every command from `SUMMARIES`, each line its command's own."""

from __future__ import annotations

import importlib

import click
from click.testing import CliRunner

from inferq.cli import COMMANDS, SUMMARIES, main


def test_each_summary_is_its_commands_own_first_sentence() -> None:
    # Given the table that --help reads, and the commands themselves
    assert sorted(SUMMARIES) == sorted(COMMANDS)
    for name, target in COMMANDS.items():
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        # Then each summary is what click would have shown for that command
        assert SUMMARIES[name] == command.get_short_help_str(limit=10_000), name


def test_help_lists_every_command() -> None:
    done = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert done.exit_code == 0
    listed = done.output.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == sorted(COMMANDS)
    assert "  status      State, counts, timestamps and rate of a job." in listed
