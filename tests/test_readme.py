"""The README and docs/ show what the commands do today: every `$ kvmkit …` line they print names a command that
exists with options it takes, and the console blocks that need no lab (plan) are compared with real output."""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from kvmkit import cli

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROMPT = re.compile(r"^\$ (kvmkit .*)$")


def command_lines() -> list[tuple[str, int, str]]:
    """(file, line number, command) of every `$ kvmkit …` line in a console block."""
    found = []
    for path in DOCS:
        in_block = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_block = line.strip() in ("```console", "```shell", "```sh", "```bash") if not in_block else False
                continue
            if in_block and (match := PROMPT.match(line)):
                found.append((path.name, number, match.group(1)))
    return found


def argv_of(command: str) -> list[str]:
    """The kvmkit argv of a shown command: without its comment, pipes and redirections."""
    command = re.split(r"\s+#\s", command, maxsplit=1)[0]
    command = re.split(r"\s[|>]\s?", command, maxsplit=1)[0]
    return shlex.split(command)[1:]


@functools.cache
def root_command() -> Any:
    cli.mount([])  # every command group, as `kvmkit --help` shows them
    return get_command(cli.app)


def resolve(argv: list[str]) -> tuple[Any, list[str]]:
    """The (click) command the argv names, and the arguments left for it."""
    command = root_command()
    rest = list(argv)
    while _is_group(command) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            raise AssertionError(f"no command {rest[0]!r} under {command.name!r}")
        command, rest = sub, rest[1:]
    return command, rest


def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


LINES = command_lines()


def test_the_docs_show_commands():
    assert len(LINES) > 50  # the parser found the console blocks


@pytest.mark.parametrize(("where", "number", "command"), LINES, ids=[f"{f}:{n}" for f, n, _ in LINES])
def test_every_shown_command_exists_and_takes_the_options_shown(where, number, command):
    argv = argv_of(command)
    if argv in ([], ["--version"]) or argv[:1] in (["--help"], ["-h"]):
        return
    target, rest = resolve([a for a in argv if a not in ("--debug", "-q", "--quiet")])
    assert not _is_group(target) or rest or target.invoke_without_command, \
        f"{where}:{number}: {command!r} names a group, not a command"
    options = {name for param in target.params for name in (*param.opts, *param.secondary_opts)}
    options |= {"--help"}
    given = rest[: rest.index("--")] if "--" in rest else rest
    unknown = [a.split("=", 1)[0] for a in given if a.startswith("-") and a.split("=", 1)[0] not in options
               and not re.fullmatch(r"-\d+(\.\d+)?", a)]
    assert unknown == [], f"{where}:{number}: {command!r}: {target.name} has no option {', '.join(unknown)}"


def console_block_after(path: Path, command: str) -> list[str]:
    """The output the docs show under `$ command`, up to the next prompt or the end of the block."""
    lines = path.read_text().splitlines()
    start = lines.index(f"$ {command}") + 1
    out = []
    for line in lines[start:]:
        if line.startswith(("$ ", "```")):
            break
        out.append(line.rstrip())
    return out


def test_the_readmes_plan_table_is_what_plan_evaluate_prints():
    command = "kvmkit plan evaluate examples/plan/example.toml --top 3"
    run = subprocess.run([sys.executable, "-m", *shlex.split(command)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert run.returncode == 0, run.stderr
    shown = console_block_after(ROOT / "README.md", command)
    printed = [line.rstrip() for line in run.stdout.splitlines()]
    assert printed == shown, "README.md's plan table differs from what `" + command + "` prints:\n" + run.stdout


def test_the_readme_is_short_and_its_first_screen_is_for_operators():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 15 * 1024
    first_screen = "\n".join(text.splitlines()[:40])
    assert "scripts/install.sh --host" in first_screen and "kvmkit doctor" in first_screen
    assert first_screen.index("scripts/install.sh --host") < text.index("make demo")
    assert "Do not run `make demo` or `make test` on a production host" in first_screen
    assert (ROOT / "docs" / "operators.md").is_file() and (ROOT / "LICENSE").read_text().lstrip().startswith(
        "Apache License")
