"""Log lines with their priority when stdout or stderr is systemd's journal.

Under systemd, stdout and stderr are a stream to journald, and the service
manager says so in ``JOURNAL_STREAM`` (``<device>:<inode>`` of that stream,
see systemd.exec(5)). journald gives every line the unit's default priority
(6, info) unless the line starts with a ``<N>`` syslog priority, which it
strips (``SyslogLevelPrefix=yes``, the default; sd-daemon(3)). It also
stamps each line with the time and the pid itself, so oslo.log's own prefix
would be said twice.

So a handler writing to the journal stream gets :class:`Formatter`: each
line ``<N>`` plus a short text, tracebacks included line by line. No
systemd-python is needed. A variable inherited by a process whose output
goes elsewhere (a shell started from a unit) does not match the stream's
device and inode, and changes nothing.
"""

import logging
import os
import sys

from zmq_receiver import errors

#: syslog priorities (sd-daemon(3) SD_ERR, SD_WARNING, ...) by level.
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3),
              (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7

#: The text after the priority: journald records the time and the pid.
SHORT_FORMAT = '%(levelname)s %(name)s: %(message)s'


def priority(levelno):
    """The syslog priority of logging level *levelno*."""
    for level, value in PRIORITIES:
        if levelno >= level:
            return value
    return DEBUG_PRIORITY


def _journal_stream():
    """(device, inode) from ``JOURNAL_STREAM``, or None."""
    device, _, inode = os.environ.get('JOURNAL_STREAM', '').partition(':')
    try:
        return int(device), int(inode)
    except ValueError:
        return None


def is_journal(stream):
    """Whether *stream* (a file object) is the journal stream that
    ``JOURNAL_STREAM`` names."""
    expected = _journal_stream()
    if expected is None:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == expected


def prefixed(text, levelno):
    """*text* with ``<N>`` for *levelno* at the start of each line."""
    mark = '<%d>' % priority(levelno)
    return '\n'.join(mark + line for line in text.split('\n'))


class Formatter(logging.Formatter):
    """:data:`SHORT_FORMAT` (or the text of *inner*, a JSON formatter say),
    each line prefixed with the record's priority."""

    def __init__(self, inner=None):
        super().__init__(SHORT_FORMAT)
        self.inner = inner

    def format(self, record):
        text = (self.inner.format(record) if self.inner is not None
                else super().format(record))
        return prefixed(text, record.levelno)


def _stream_handlers(logger):
    # A file handler is a StreamHandler too; its file is never the journal.
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and
            not isinstance(h, logging.FileHandler)]


def adopt(keep_format=False, logger=None):
    """Give every handler of *logger* (the root logger) that writes to the
    journal stream a :class:`Formatter`; with *keep_format* (JSON logs),
    around its own formatter. Returns whether any did."""
    logger = logger or logging.getLogger()
    found = False
    for handler in _stream_handlers(logger):
        if is_journal(handler.stream):
            handler.setFormatter(
                Formatter(handler.formatter if keep_format else None))
            found = True
    return found


def start_handler():
    """Before the logging setup: a root handler on stderr when it is the
    journal stream, so that what is logged that early carries its priority
    too (the setup replaces it). Returns whether one was added."""
    if not is_journal(sys.stderr):
        return False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter())
    logging.getLogger().addHandler(handler)
    return True


def error_line(text, stream):
    """*text* as an error line for *stream*: prefixed when it is the
    journal."""
    return prefixed(text, logging.ERROR) if is_journal(stream) else text


def require_bindings():
    """For ``--use-journal``: raise ConfigError unless systemd-python,
    which oslo.log's journal handler needs, can be imported. Without it
    oslo.log fails inside its setup with a bare RuntimeError; an operator
    who asked for the journal is told at start, with the fix."""
    try:
        import systemd.journal  # noqa: F401
    except ImportError as exc:
        raise errors.ConfigError(
            '--use-journal needs systemd-python, which cannot be imported '
            '(%s): pip install \'oslo-messaging-zmq-receiver[systemd]\' '
            '(needs libsystemd-dev and gcc), or drop --use-journal: under '
            'systemd the receiver already logs to the journal with '
            'priorities through stderr' % exc)
