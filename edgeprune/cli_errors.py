"""EdgepruneError (and the environment's OSError) as one line and an exit code, for every command."""

from __future__ import annotations

import errno
import functools
import sys

import click

from edgeprune.errors import EdgepruneError


def friendly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgepruneError as exc:
            click.echo(f"error: {exc.one_line()}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # the environment, not a bug: full disk, permissions, a vanished file
            what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or type(exc).__name__)
            where = exc.filename or "file system"
            click.echo(f"error: {where}: {what} — fix: free space or fix permissions, then rerun "
                       "(finished steps are kept)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; finished steps are kept and a rerun resumes from them", err=True)
            sys.exit(130)
    return wrapper
