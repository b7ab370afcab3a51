"""Handing freed heap memory back to the system.

libzmq holds a message whole while it arrives, one 64-byte zmq_msg_t per
frame, before the receiver can look at it (its pipes count whole messages,
not frames). A message of millions of empty frames is discarded once read,
but glibc keeps the freed chunks in its arenas, so the process's RSS would
stay at the peak for ever. :func:`trim` returns them (``malloc_trim``).
"""

import ctypes
import ctypes.util
import logging

LOG = logging.getLogger(__name__)

_trim = None


def trim():
    """Return free heap memory to the system; False where the C library
    has no ``malloc_trim`` (not glibc)."""
    global _trim
    if _trim is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
            _trim = libc.malloc_trim
            _trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError) as exc:
            LOG.debug('No malloc_trim (%s): freed memory stays with the '
                      'process', exc)
            _trim = False
    if _trim is False:
        return False
    _trim(0)
    return True
