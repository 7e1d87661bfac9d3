"""Every command the README and docs/ tell a user to run parses: its flags exist, its
--config file exists, its --set keys and values are accepted. Nothing is run: each
job's own argument parser reads the command and stops there."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest

from pdml_ray.config import ConfigError, load_config
from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m ((?:jobs|tuning)\.\w+)(.*)")
SHELL_VALUES = {"$PWD": "/work/project", "$PDML_BUCKET": "bucket"}


def documented_commands() -> list[tuple[str, str, str]]:
    """(where, module, arguments) of each runnable command in an indented code block:
    continuation lines joined, comments and shell-only words dropped; synopsis lines
    (``[--config FILE]``, ``a | b``, ``...``) are descriptions, not commands."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        index = 0
        while index < len(lines):
            line, number = lines[index], index + 1
            while line.rstrip().endswith("\\") and index + 1 < len(lines):
                index += 1
                line = line.rstrip()[:-1] + " " + lines[index].strip()
            index += 1
            if not line.startswith("    "):
                continue
            if index < len(lines) and lines[index].strip().startswith("error:"):
                continue  # an example of a refused command, shown with its message
            match = COMMAND.search(line.split(" # ")[0])
            if match is None:
                continue
            module, rest = match.groups()
            if any(mark in rest for mark in ("[", " | ", "...", "<")):
                continue
            for name, value in SHELL_VALUES.items():
                rest = rest.replace(name, value)
            rest = re.sub(r"\$\w+", "", rest)  # a variable the text set up, e.g. $ON_CLUSTER
            found.append((f"{path.relative_to(REPO)}:{number}", module, rest.strip()))
    return found


COMMANDS = documented_commands()


class Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def test_the_docs_hold_the_commands_a_user_runs():
    modules = {module for _, module, _ in COMMANDS}
    assert {"jobs.train", "jobs.predict", "jobs.prepare_points", "jobs.check_data",
            "jobs.evaluate", "jobs.registry", "jobs.suggest", "tuning.sweep",
            "jobs.make_synthetic"} <= modules


@pytest.mark.parametrize("where, module, arguments", COMMANDS,
                         ids=[where for where, _, _ in COMMANDS])
def test_documented_command_parses(where, module, arguments, monkeypatch, tmp_path, capsys):
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module, *shlex.split(arguments)])
    monkeypatch.chdir(REPO)  # documented paths (configs/...) are relative to the checkout
    main = importlib.import_module(module).main
    with pytest.raises(Parsed) as parsed:
        try:
            main()
        except SystemExit:
            pytest.fail(f"{where}: {module} {arguments}: {capsys.readouterr().err.strip()}")
    args = parsed.value.namespace
    if getattr(args, "config", None):
        assert (REPO / args.config).is_file(), f"{where}: no config file {args.config}"
    try:
        load_config(getattr(args, "config", None), getattr(args, "overrides", None) or [])
    except ConfigError as exc:
        pytest.fail(f"{where}: {exc}")
