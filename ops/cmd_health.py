"""`ops health`: placeholder until its issue lands."""

import click

from ops.errors import UserError


@click.command("health", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args):
    """(not built yet)"""
    raise UserError("'ops health' is not built yet")
