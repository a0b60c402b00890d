"""Exceptions the library raises. The CLI turns each into one line and an exit code.

Every message names the file/option at fault and the problem, so a user can act on it.
"""
from __future__ import annotations


class CfgenError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class InputError(CfgenError):
    """A bad input file, table row or value."""


class ScanReadError(InputError):
    """A scan that cannot be read (missing, corrupt, unsupported)."""


class ModelError(CfgenError):
    """A model that cannot be found, verified or loaded."""


class ModelNotAvailableError(ModelError):
    """Model files are not on this machine and cannot be downloaded now."""


class UsageError(CfgenError):
    """Options that contradict each other or are out of range."""

    exit_code = 2
