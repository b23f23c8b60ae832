"""`ops report`: placeholder until its issue lands."""

import click

from ops.errors import UserError


@click.command("report", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args):
    """(not built yet)"""
    raise UserError("'ops report' is not built yet")
