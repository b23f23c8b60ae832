"""`ops preflight`: placeholder until its issue lands."""

import click

from ops.errors import UserError


@click.command("preflight", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args):
    """(not built yet)"""
    raise UserError("'ops preflight' is not built yet")
