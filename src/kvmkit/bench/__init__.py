"""kvmkit bench: storage benchmarks done right, with fio as the engine.

Public API (the CLI is a thin layer over it):
    run_suite(suite, target, runner, options) -> BenchRun   # engine.py
    Runner (Protocol), HostRunner                           # runner.py: where fio runs
    BenchRun, load_run                                      # schema.py: the versioned result
    lint_file, lint_text                                    # lint.py
    write_html                                              # report.py
"""

from kvmkit.bench.engine import BenchOptions, run_suite
from kvmkit.bench.lint import lint_file, lint_text
from kvmkit.bench.probe import TargetProbe
from kvmkit.bench.report import write_html
from kvmkit.bench.runner import Completed, HostRunner, Runner
from kvmkit.bench.schema import SCHEMA, BenchRun, load_run

__all__ = [
    "SCHEMA",
    "BenchOptions",
    "BenchRun",
    "Completed",
    "HostRunner",
    "Runner",
    "TargetProbe",
    "lint_file",
    "lint_text",
    "load_run",
    "run_suite",
    "write_html",
]
