"""`ops report [EXP] [--open] [--json]`: the morning report of a run. Reads the run, writes report files.

Writes results/<exp>/ops/report.html (self-contained, plots embedded) and report.md, prints the Markdown
summary (or the report as JSON with --json). EXP is a run directory or a name under --results; without
it, the run whose journal changed last.
"""

from __future__ import annotations

import json
import os
import time
import webbrowser
from datetime import datetime, timezone
from pathlib import Path

import click

from ops.report import Report, build_report, render_markdown
from ops.rundata import load_run
from ops.runs import resolve_exp


def resolve_run(exp: str | None, results: Path) -> Path:
    """A run directory given as a path, else a name under `results` (ops.runs rules), else the latest run."""
    if exp is not None and (Path(exp) / "ops" / "journal.jsonl").is_file():
        return Path(exp)
    _, paths = resolve_exp(exp, results)
    return paths.root


def write_report(root: Path, now: float | None = None) -> tuple[Report, Path, Path]:
    """Build the report of the run at `root` and write ops/report.html and ops/report.md (atomically)."""
    from ops.plots import render_plots
    from ops.report_html import render_html

    now = time.time() if now is None else now
    run = load_run(root)
    report = build_report(run, now)
    generated = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    html = render_html(report, render_plots(report), generated)
    ops_dir = run.paths.ops_dir
    ops_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = ops_dir / "report.html", ops_dir / "report.md"
    _atomic_write(html_path, html)
    _atomic_write(md_path, render_markdown(report, html_path))
    return report, html_path, md_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@click.command("report")
@click.argument("exp", required=False)
@click.option("--results", "results", default="results", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where runs live (results/<exp>/).")
@click.option("--open", "open_browser", is_flag=True, help="Open the HTML report in a browser.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of Markdown.")
def command(exp: str | None, results: Path, open_browser: bool, as_json: bool) -> int:
    """The morning report of a run: verdict, success criteria, attempts, curves, goodput.

    EXP is a run directory or a name under --results (default: the most recent run). Writes
    <run>/ops/report.html (self-contained) and <run>/ops/report.md. Exit 0 when the report was written.
    """
    root = resolve_run(exp, results)
    report, html_path, md_path = write_report(root)
    if as_json:
        click.echo(json.dumps({**report.to_json(), "html": str(html_path), "markdown": str(md_path)}, indent=2))
    else:
        click.echo(md_path.read_text(encoding="utf-8"), nl=False)
    if open_browser:
        webbrowser.open(html_path.resolve().as_uri())
    return 0
