"""What every salt_fast command line shares: help that shows defaults, and one-line errors.

A command's mistake (a bad config key or value, a missing or malformed file, a hostile or
mismatched checkpoint, an output folder another run holds) is printed as one line on stderr,
``error: ...``, with exit status 2 and no traceback; a run stopped by a non-finite step exits
with status 1, its message naming the step and the checkpoint a resume would use.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from salt_fast.checkpoint import CheckpointError, NonFiniteState
from salt_fast.config import ConfigError
from salt_fast.runtime import NonFiniteLoss, OutputDirInUse

__all__ = ["HelpFormatter", "UsageError", "one_line_errors"]


class UsageError(ValueError):
    """A command asked for something its inputs cannot give (e.g. surprise from a Stage-1 run)."""


# FileNotFoundError: a path given on the command line (the messages name it).
USAGE_ERRORS = (UsageError, ConfigError, CheckpointError, OutputDirInUse, FileNotFoundError)
RUN_FAILURES = (NonFiniteLoss, NonFiniteState)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` of salt_fast's command-line tools: the description's line breaks kept, and each
    flag's default after its help text, except for on/off switches and for flags whose default
    is None (their help says what leaving them out does)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def _line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn the errors a user can cause into ``error: <one line>`` and exit status 2 (1 for a
    non-finite training step); anything else is a bug and keeps its traceback."""
    try:
        yield
    except RUN_FAILURES as exc:  # NonFiniteState is a CheckpointError: test it first
        print(f"error: {_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except USAGE_ERRORS as exc:
        print(f"error: {_line(exc)}", file=sys.stderr)
        sys.exit(2)
