"""``oslo-messaging-zmq-receiver``: the console entry point.

:func:`main` runs the startup (:mod:`zmq_receiver.startup`, where its
ordered steps and their reasons are) and turns what stops it into an exit
status: every failure is one line on stderr (and in the log) and an exit
status from :mod:`zmq_receiver.errors`; never a traceback for an
operator's mistake.
"""

import logging
import sys

from zmq_receiver import errors
from zmq_receiver import startup
# Re-exported: the configuration checks' historical home, where in-process
# tests import them from.
from zmq_receiver.startup import check_values  # noqa: F401
from zmq_receiver.startup import limits_from  # noqa: F401
from zmq_receiver.startup import load_config  # noqa: F401
from zmq_receiver.startup import settings_from  # noqa: F401

LOG = logging.getLogger(__name__)
PROG = startup.PROG


def main(argv=None):
    """Console entry point; returns the exit status."""
    boot = startup.Startup(sys.argv[1:] if argv is None else argv)
    try:
        return startup.run(boot)
    except errors.ReceiverError as exc:
        error = exc
    except Exception:
        LOG.exception('Internal error; please report it with this log')
        return errors.EXIT_INTERNAL
    # Outside the except block: oslo.log would append the exception being
    # handled to an error line, repeating the message.
    startup.report_failure(boot, error)
    return error.exit_code
