"""`ops run`: placeholder until its issue lands."""

import click

from ops.errors import UserError


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args):
    """(not built yet)"""
    raise UserError("'ops run' is not built yet")
