"""docs/cli.md's conventions, checked on every command the CLI mounts (typer/click introspection) and, where a
convention is behaviour, by running kvmkit against libvirt's in-memory test:///default driver.

Known gaps are listed by name: the test fails both when a new command breaks a convention and when a gap is
closed without taking it off the list, so the lists only shrink.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from kvmkit import cli, errors

TESTS = Path(__file__).parent
TUNE_CAPTURE = TESTS / "tune" / "fixtures" / "synthetic-xeon-2s.tar.gz"
BENCH_FIXTURES = TESTS / "bench" / "fixtures"

# commands that print no records: their output is a live view, a server, a guest's own output or a written file
NO_RECORDS = {"lab exec", "congestion top", "congestion serve", "serve", "memory top", "backup mount", "plan report",
              "tune capture"}
# commands that print records but have no --json yet
KNOWN_NO_JSON: set[str] = set()
# commands that change the host (docs/cli.md): each needs --dry-run
CHANGES_HOST = {"tune apply", "tune rollback", "congestion enforce", "congestion revert", "memory enforce",
                "memory revert", "backup prune", "backup delete", "snapshot recover", "snapshot flatten", "lab down",
                "tune vm apply", "tune vm rollback", "tune vm measure"}
KNOWN_NO_DRY_RUN: set[str] = set()
# ... and each shows its plan and asks, or needs --yes without a terminal (owners: congestion, memory)
KNOWN_NO_YES: set[str] = set()


def _walk(command, path):
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in sorted(subcommands.items()):
            yield from _walk(sub, [*path, name])
    elif path:
        yield " ".join(path), command


@pytest.fixture(scope="module")
def commands() -> dict:
    cli.mount([])
    return dict(_walk(get_command(cli.app), []))


def _options(command) -> dict[str, object]:
    return {opt: p for p in command.params if getattr(p, "param_type_name", "") == "option"
            for opt in [*p.opts, *p.secondary_opts]}


def kvmkit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], capture_output=True, text=True, timeout=120,
                          env=env)


@pytest.fixture()
def state_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "KVMKIT_STATE_DIR": str(tmp_path / "state")}


def test_the_walk_sees_every_mounted_capability(commands):
    assert {name.split()[0] for name in commands} == {name for name, _, _ in cli.SUBCOMMANDS}
    assert "doctor" in commands and "snapshot create" in commands


def test_every_command_that_prints_records_has_json(commands):
    without = {name for name, command in commands.items() if "--json" not in _options(command)}
    assert without == NO_RECORDS | KNOWN_NO_JSON


def test_the_libvirt_uri_is_connect_or_c_everywhere_and_uri_only_a_hidden_alias(commands):
    for name, command in commands.items():
        options = _options(command)
        if "--uri" in options:
            assert options["--uri"].hidden, f"{name}: --uri must be a hidden alias of --connect"
        if "--uri" in options or "--connect" in options:
            assert {"--connect", "-c"} <= options.keys(), name
            assert options["--connect"] is options["-c"], name


def test_commands_that_change_the_host_have_dry_run(commands):
    assert commands.keys() >= CHANGES_HOST
    without = {name for name in CHANGES_HOST if "--dry-run" not in _options(commands[name])}
    assert without == KNOWN_NO_DRY_RUN


def test_commands_that_change_the_host_ask_or_need_yes(commands):
    without = {name for name in CHANGES_HOST if "--yes" not in _options(commands[name])}
    assert without == KNOWN_NO_YES
    for name in CHANGES_HOST - KNOWN_NO_YES:
        assert _options(commands[name])["--yes"] is _options(commands[name])["-y"], name


def test_root_help_lists_every_exit_code():
    out = kvmkit("--help")
    codes = {cls.exit_code for cls in (errors.KvmkitError, *errors.KvmkitError.__subclasses__())}
    for code in sorted(codes | {0, 70, 130}):
        assert f" {code} " in " ".join(out.stdout.split()), code


def test_short_version_and_quiet_at_the_root(state_env):
    assert kvmkit("-V").stdout == kvmkit("--version").stdout != ""
    loud = kvmkit("doctor", "--connect", "test:///default", env=state_env)
    quiet = kvmkit("-q", "doctor", "--connect", "test:///default", env=state_env)
    assert loud.stdout.count("\n") > 3 and quiet.stdout == ""
    assert quiet.returncode == loud.returncode == 1  # test:///default's domain has no agent channel
    as_json = kvmkit("-q", "doctor", "--json", "--connect", "test:///default", env=state_env)
    assert json.loads(as_json.stdout)["exit_code"] == 1  # -q silences people's output, never --json


def test_debug_prints_the_traceback_and_keeps_the_mapped_exit_code(tmp_path):
    env = {**os.environ, "KVMKIT_CONFIG": str(tmp_path / "missing.toml")}
    plain, debug = kvmkit("lab", "status", env=env), kvmkit("--debug", "lab", "status", env=env)
    assert plain.returncode == debug.returncode == errors.InvalidInput.exit_code
    assert "Traceback" in debug.stderr and "Traceback" not in plain.stderr
    assert debug.stderr.rstrip().splitlines()[-1] == plain.stderr.rstrip()


def test_errors_are_json_on_stdout_with_json_and_suggest_close_vm_names(state_env):
    out = kvmkit("snapshot", "list", "tesst", "--connect", "test:///default", "--json", env=state_env)
    assert out.returncode == errors.NotFound.exit_code
    assert json.loads(out.stdout) == {"error": {
        "type": "not_found", "message": "no VM named 'tesst' on test:///default; did you mean 'test'?",
        "exit_code": 3}}
    assert out.stderr == "kvmkit: error: no VM named 'tesst' on test:///default; did you mean 'test'?\n"
    far = kvmkit("snapshot", "list", "zzzz", "--connect", "test:///default", env=state_env)
    assert far.stderr == "kvmkit: error: no VM named 'zzzz' on test:///default\n" and far.stdout == ""


def test_snapshot_list_with_connect_really_connects(state_env):
    bad = kvmkit("snapshot", "list", "--connect", "qemu:///sytem", env=state_env)
    assert bad.returncode == errors.EnvironmentProblem.exit_code
    assert bad.stderr.startswith("kvmkit: error: cannot connect to libvirt at qemu:///sytem")
    good = kvmkit("snapshot", "list", "--connect", "test:///default", "--json", env=state_env)
    assert good.returncode == 0 and json.loads(good.stdout) == []


def test_repeated_vm_arguments_are_one_snapshot_attempt(state_env):
    """test:///default's VM has no agent: one clear refusal, not two racing attempts on the same lock."""
    out = kvmkit("snapshot", "create", "test", "test", "--connect", "test:///default", env=state_env)
    assert out.returncode == errors.EnvironmentProblem.exit_code
    assert out.stderr.count("kvmkit: error:") == 1 and "no guest agent answers" in out.stderr


def test_shell_completion_is_installable_and_completes_subcommands():
    console_script = str(Path(sys.executable).with_name("kvmkit"))  # completion is keyed on the program's name
    # the shell named: without it typer guesses from the parent processes (shellingham), which fails when pytest
    # was started by something that is not a shell
    script = subprocess.run([console_script, "--show-completion", "bash"], capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "complete -o default -F _kvmkit_completion kvmkit" in script.stdout
    env = {**os.environ, "_KVMKIT_COMPLETE": "complete_bash", "COMP_WORDS": "kvmkit snapshot cr", "COMP_CWORD": "2"}
    done = subprocess.run([console_script], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["create"]


def test_help_texts_show_brackets_literally(commands):
    """typer renders help as rich markup: `[[demand]]` printed as `[]` until escaped (rich.markup.escape)."""
    from rich.text import Text

    root = get_command(cli.app)
    groups = [(name, sub) for name, sub in root.commands.items()]
    for name, command in [*commands.items(), *groups]:
        for text in [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]:
            assert Text.from_markup(text).plain == text.replace("\\[", "["), f"{name}: {text!r}"
    assert "for the file's [[demand]]," in " ".join(kvmkit("plan", "fleet", "--help").stdout.split())


# (command line, what it names); each with a path that does not exist
INPUT_FILES = [
    (["plan", "evaluate", "{missing}"], "plan file"), (["plan", "fleet", "{missing}"], "plan file"),
    (["plan", "sensitivity", "{missing}", "--vary", "cpu_ratio=1:2"], "plan file"),
    (["plan", "report", "{missing}", "--html", "{tmp}/r.html"], "plan file"),
    (["bench", "lint", "{missing}"], "job file"), (["bench", "compare", "{missing}"], "result file"),
    (["tune", "audit", "--goal", "latency", "--from", "{missing}"], "capture"),
    (["tune", "audit", "--goal", "latency", "--root", "{missing}"], "--root"),
    (["tune", "audit", "--goal", "latency", "--profile-dir", "{missing}"], "--profile-dir"),
    (["tune", "capture", "--root", "{missing}", "-o", "{tmp}/c.tgz"], "--root"),
    (["tune", "diff", "{missing}", "live"], "capture"),
    (["tune", "rollback", "--root", "{tmp}", "--rollback-file", "{missing}"], "no rollback file"),
    (["congestion", "advise", "--history", "{missing}", "--slo-pct", "5"], "history file"),
    (["memory", "advise", "--history", "{missing}", "--slo-pct", "5"], "history file"),
]


@pytest.mark.parametrize(("argv", "what"), [
    *INPUT_FILES, (["congestion", "policy", "{missing}"], "policy file"), (["memory", "policy", "{missing}"],
                                                                          "policy file")])
def test_a_missing_input_file_is_not_found_everywhere(argv, what, tmp_path, state_env):
    missing = tmp_path / "absent"
    out = kvmkit(*(a.format(missing=missing, tmp=tmp_path) for a in argv), env=state_env)
    assert out.returncode == errors.NotFound.exit_code, out.stderr
    assert out.stderr.startswith(f"kvmkit: error: {what}") and str(missing) in out.stderr
    assert out.stderr.count("\n") == 1 and not list(tmp_path.glob("[rc].*"))


def test_host_changing_commands_need_yes_without_a_terminal_and_dry_run_changes_nothing(tmp_path, state_env):
    from kvmkit.lab.state import LabDisk, LabState, LabVm

    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    record = LabState(dir=lab_dir, uri="test:///default", started_pids={"libvirtd": 999_999_999},
                      vms=[LabVm(name="labx1", console_log=lab_dir / "c.log",
                                 disks=[LabDisk(target="vda", kind="file", source=str(lab_dir / "d"), size_mib=1)])])
    (lab_dir / "state.json").write_text(record.model_dump_json())
    env = {**state_env, "KVMKIT_LAB_DIR": str(lab_dir)}
    dry = kvmkit("lab", "down", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["done"] == []
    assert plan["plan"][0] == "destroy and undefine VM labx1 and delete its disks (vda)"
    assert "stop the libvirtd it started (pid 999999999)" in plan["plan"]
    refused = subprocess.run([sys.executable, "-m", "kvmkit", "lab", "down"], env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == errors.InvalidInput.exit_code and "pass --yes" in refused.stderr
    assert LabState.model_validate_json((lab_dir / "state.json").read_text()) == record  # nothing was touched
    import pty

    terminal, their_end = pty.openpty()  # on a terminal it shows the plan and asks; "n" changes nothing
    os.write(terminal, b"n\n")
    asked = subprocess.run([sys.executable, "-m", "kvmkit", "lab", "down"], env=env, stdin=their_end,
                           capture_output=True, text=True, timeout=60)
    os.close(their_end)
    os.close(terminal)
    assert asked.returncode == 130 and "destroy and undefine VM labx1" in asked.stderr and "Go ahead?" in asked.stderr
    assert LabState.model_validate_json((lab_dir / "state.json").read_text()) == record
    empty = {**state_env, "KVMKIT_LAB_DIR": str(tmp_path / "no-lab")}
    assert kvmkit("lab", "down", "--dry-run", env=empty).stdout == "lab: nothing to take down\n"


def test_tune_rollback_dry_run_shows_the_values_and_writes_nothing(tmp_path, state_env):
    tree = tmp_path / "host"
    swappiness = tree / "proc/sys/vm/swappiness"
    swappiness.parent.mkdir(parents=True)
    swappiness.write_text("60\n")
    rollback_file = tmp_path / "rb.json"
    args = ["--root", str(tree), "--rollback-file", str(rollback_file)]
    applied = kvmkit("tune", "apply", "--goal", "throughput", "--only", "swappiness", "--json", *args, env=state_env)
    assert applied.returncode == 0, applied.stderr  # a --root tree is not this host: no --yes needed
    assert swappiness.read_text().strip() == "10"
    dry = kvmkit("tune", "rollback", "--dry-run", "--json", *args, env=state_env)
    assert [(c["path"], c["old"], c["new"], c["outcome"]) for c in json.loads(dry.stdout)] == [
        ("/proc/sys/vm/swappiness", "60", "10", "planned")]
    assert swappiness.read_text().strip() == "10" and rollback_file.exists()
    assert kvmkit("tune", "rollback", *args, env=state_env).returncode == 0
    assert swappiness.read_text().strip() == "60" and not rollback_file.exists()


def test_empty_results_print_a_sentence_not_an_empty_table(state_env, tmp_path):
    listed = kvmkit("snapshot", "list", "--connect", "test:///default", env=state_env)
    assert listed.returncode == 0 and listed.stdout == "no snapshots on test:///default\n"
    same = kvmkit("tune", "diff", str(TUNE_CAPTURE), str(TUNE_CAPTURE), env=state_env)
    assert same.returncode == 0 and "┏" not in same.stdout and same.stdout.count("\n") == 1
    assert "agree on all" in same.stdout
    example = (TESTS.parent / "examples" / "plan" / "example.toml").read_text()
    assert "\nram_gb = 16\n" in example
    (tmp_path / "nofit.toml").write_text(example.replace("\nram_gb = 16\n", "\nram_gb = 1600000\n", 1))
    nofit = kvmkit("plan", "evaluate", str(tmp_path / "nofit.toml"), env=state_env)
    assert nofit.returncode == 0 and "┏" not in nofit.stdout and nofit.stdout.count("\n") == 1
    assert nofit.stdout.startswith("none of the ") and "can host the reference VM" in nofit.stdout


def test_bench_lint_takes_several_files(state_env):
    bad, good = BENCH_FIXTURES / "bad" / "zero-buffers.fio", BENCH_FIXTURES / "good" / "file-randrw-libaio.fio"
    out = kvmkit("bench", "lint", str(bad), str(good), str(bad), env=state_env)
    assert out.returncode == 1
    assert out.stdout.count(f"{bad}: 1 error(s)") == 1 and f"{good}: 0 error(s), 0 warning(s)" in out.stdout
    as_json = json.loads(kvmkit("bench", "lint", "--json", str(good), str(bad), env=state_env).stdout)
    assert [(f["file"], f["code"]) for f in as_json] == [(str(bad), "KB104")]


# a libvirt that cannot be reached is "the host lacks something" (exit 5) wherever a command connects
UNREACHABLE = [["snapshot", "list"], ["snapshot", "list", "vm1"], ["snapshot", "create", "vm1"],
               ["snapshot", "delete", "vm1", "s1"], ["snapshot", "flatten", "vm1", "--dry-run"],
               ["snapshot", "recover"], ["lab", "exec", "vm1", "--", "true"], ["congestion", "domains"],
               ["bench", "run", "-s", "sweep", "-t", "/x", "--vm", "a"], ["memory", "sample"]]


@pytest.mark.parametrize("argv", UNREACHABLE, ids=" ".join)
def test_an_unreachable_libvirt_is_exit_5_everywhere(argv, state_env):
    cut = argv.index("--") if "--" in argv else len(argv)
    out = kvmkit(*argv[:cut], "--connect", "qemu:///sytem", *argv[cut:], env=state_env)
    assert out.returncode == errors.EnvironmentProblem.exit_code, out.stderr
    assert out.stderr.startswith("kvmkit: error: cannot connect to libvirt at qemu:///sytem")
