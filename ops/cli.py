"""The `ops` entry point: one click group; each subcommand lives in its own `ops/cmd_*.py` module.

\b
Exit codes (all commands):
  0  success / nothing FAILed
  1  the thing checked or supervised failed (a preflight FAIL, a run that ended failed)
  2  usage error: a bad flag, name, path or value (one line names it and the fix)
  3  internal error (a bug): rerun with --debug for the traceback
"""

from __future__ import annotations

import importlib
import sys

import click

from ops import logs
from ops.errors import UserError

# Subcommand modules, each exposing `command` (a click.Command or click.Group).
COMMAND_MODULES = (
    "ops.cmd_preflight",
    "ops.cmd_run",
    "ops.cmd_prepare",
    "ops.cmd_report",
    "ops.cmd_health",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__.split("\n", 2)[2])
@click.option("--debug", is_flag=True, help="Verbose logs; tracebacks for errors.")
@click.version_option(package_name="grpo-ops")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logs.configure(debug=debug)


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for cmd in getattr(module, "commands", (module.command,)):
            cli.add_command(cmd)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map user mistakes to one line and exit 2, bugs to one line and exit 3."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        rv = cli.main(args=argv, prog_name="ops", standalone_mode=False)
        return int(rv or 0)
    except UserError as err:
        if debug:
            raise
        click.echo(f"ops: error: {err}", err=True)
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("ops: aborted", err=True)
        return 130
    except click.ClickException as err:
        # click's own usage errors: keep them to one line plus the hint.
        msg = err.format_message()
        hint = ""
        if isinstance(err, click.UsageError) and err.ctx is not None:
            hint = f" (see: {err.ctx.command_path} --help)"
        click.echo(f"ops: error: {msg}{hint}", err=True)
        return err.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug: one line, traceback only with --debug
        if debug:
            raise
        click.echo(f"ops: internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
                   err=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
