"""Errors that end the receiver before or outside its loop.

Each class carries the exit status it ends the process with, so that the
command line turns any of them into one line on stderr and that status, and
systemd (``RestartPreventExitStatus=``) or a supervisor can tell an
operator's mistake from a transient failure. The statuses follow
``sysexits.h`` where it has one.
"""

import os

#: Stopped on request, after an orderly shutdown.
EXIT_OK = 0
#: The command line could not be parsed (argparse's own status).
EXIT_USAGE = 2
#: Another receiver already serves the IPC directory.
EXIT_ALREADY_RUNNING = os.EX_UNAVAILABLE      # 69
#: A bug: an unexpected exception.
EXIT_INTERNAL = os.EX_SOFTWARE                # 70
#: The TCP address is in use (possibly transient: an old instance stopping).
EXIT_ADDRESS_IN_USE = os.EX_TEMPFAIL          # 75
#: A file, directory or privilege problem the operator must fix (a config
#: file the user may not read included).
EXIT_PERMISSION = os.EX_NOPERM                # 77
#: A configuration value is wrong, or a config file missing or unparsable.
EXIT_CONFIG = os.EX_CONFIG                    # 78


class ReceiverError(Exception):
    """An error that ends the receiver with :attr:`exit_code`.

    The message is complete for an operator: the thing, the problem and
    the fix.
    """

    exit_code = EXIT_INTERNAL


class ConfigError(ReceiverError):
    """A configuration value or file is wrong."""

    exit_code = EXIT_CONFIG


class PermissionProblem(ReceiverError):
    """A file, directory or privilege is not as the receiver needs it."""

    exit_code = EXIT_PERMISSION


class AddressInUse(ReceiverError):
    """The TCP port is already bound by another process."""

    exit_code = EXIT_ADDRESS_IN_USE


class AlreadyRunning(ReceiverError):
    """Another receiver holds the IPC directory's lock."""

    exit_code = EXIT_ALREADY_RUNNING
