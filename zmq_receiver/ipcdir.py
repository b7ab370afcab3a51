"""The IPC directory while the receiver runs: its watch, and the descriptors.

:mod:`zmq_receiver.rundir` creates the directory and locks it at start;
this module keeps it usable afterwards:

* :class:`DirectoryWatch` notices that the directory, or a socket file in
  it, vanished under the running receiver, locks the directory again once
  it is back (``reclaim``), and binds every socket at its path again,
  keeping a bounded number of stale listeners for the consumers still
  connected through them;
* :class:`DescriptorBudget` refuses a new outlet that would leave too few
  descriptors for connections (libzmq aborts the whole process when it
  cannot accept one).

And the small helpers every unix socket of the receiver binds with
(:func:`bind_ipc`, :data:`LISTEN_BACKLOG`, :func:`remove_socket_file`).
"""

import collections
import errno
import logging
import os
import resource
import time

import zmq

from zmq_receiver import errors
from zmq_receiver import ipcfile
from zmq_receiver import metrics

LOG = logging.getLogger(__name__)

#: Listeners a socket keeps bound, beside its current one, after its file
#: vanished and it was bound again: the consumers connected through them
#: stay connected. Past it the oldest is unbound, which cuts its consumers
#: (they reconnect to the current file by themselves). Without a bound, a
#: user who may remove files in the IPC directory (a member of a shared
#: group directory without the sticky bit) would make the receiver keep a
#: descriptor for every removal, until libzmq aborts for want of one.
STALE_LISTENERS = 1

#: listen(2) backlog of the unix sockets (outlets, control; libzmq's
#: default is 100). Connections over a cap are shut down only once libzmq
#: has accepted them and the loop has read its monitor; a short backlog
#: makes a local flood of connections wait for libzmq's accepts, so that
#: the loop mostly keeps up (under 256 descriptors, with 100 three flooding
#: processes made libzmq abort the receiver; with 2, two never did, six
#: did once in two runs: see README, "Limits"). A consumer that finds it
#: full retries after libzmq's reconnect interval (0.1 s).
LISTEN_BACKLOG = 2

#: errno of a failed bind -> the reason it is counted under.
ERRNO_REASONS = {
    errno.EMFILE: metrics.OUT_OF_DESCRIPTORS,
    errno.ENFILE: metrics.OUT_OF_DESCRIPTORS,
    errno.EACCES: metrics.IPC_PERMISSION,
    errno.EPERM: metrics.IPC_PERMISSION,
    errno.ENOENT: metrics.IPC_DIR_MISSING,
}

#: Nanoseconds within which a directory's mtime may miss a later change
#: (coarse kernel clocks; filesystems that keep whole seconds).
_RACY_NS = 2 * 10 ** 9

#: Descriptors one outlet takes: its socket's mailbox, its listener, and
#: the monitor pair's two mailboxes.
FDS_PER_OUTLET = 4
#: Descriptors kept free for connections (consumers, senders, the admin
#: tool), at most an eighth of the limit: libzmq 4.3 aborts the whole
#: process (errno_assert in ipc_listener.cpp) when it cannot accept a
#: connection to an IPC socket for want of a descriptor.
FD_RESERVE = 64


class DirectoryWatch:
    """Keeps the sockets in the IPC directory bound while the receiver runs.

    *reclaim* is called when the directory is back after it was removed,
    to lock it again (rundir.InstanceLock.reacquire); it may raise
    errors.ReceiverError, and then nothing is bound there. *connections*
    is the unix sockets' connections.Connections, told of every name a
    socket is bound with or unbound from (None: nobody is told).
    """

    def __init__(self, ipc_dir, counters, warn, reclaim=None,
                 connections=None):
        self.ipc_dir = ipc_dir
        self.counters = counters
        self.warn = warn
        self.reclaim = reclaim
        self.connections = connections
        #: The IPC directory's last stat (for its owner and mode once it
        #: is gone); False while it is gone (or back, but not ours again).
        try:
            self._dir_stat = os.stat(ipc_dir)
        except OSError:
            self._dir_stat = None
        #: Whether the last check_files found the directory gone: new
        #: outlets are refused without trying.
        self.dir_gone = False
        #: The directory's (st_dev, st_ino, st_mtime_ns, st_ctime_ns) when
        #: check_files last looked at its files: any file made or removed
        #: in it changes them, and so does a new directory.
        self._dir_key = None
        #: Whether check_files must look at the files even so (a bind
        #: failed, or the key may miss a change made in the same instant).
        self._rescan = True
        #: Sockets bound beside the outlets (the control socket) whose
        #: files check_files keeps too: path -> (socket, name, clients),
        #: as given to keep_bound.
        self._kept = {}
        #: Socket -> the endpoints of its listeners whose file vanished,
        #: oldest first (at most STALE_LISTENERS).
        self.stale = {}

    @property
    def dir_missing(self):
        """Whether the IPC directory was found gone (and not yet ours
        again) by the last :meth:`check_files`."""
        return self._dir_stat is False

    def note_bound(self, sock, path):
        """Tell the connection caps the name *sock* was just bound with at
        *path* (see connections.Connections.bound)."""
        if self.connections is not None:
            self.connections.bound(
                path, sock.getsockopt_string(zmq.LAST_ENDPOINT))

    def keep_bound(self, sock, path, name, clients):
        """Have :meth:`check_files` bind *sock* at *path* again whenever
        its file is missing, like an outlet's (the control socket). *name*
        says what it is and *clients* who connect to it, in the log. A
        socket whose first bind failed is bound once it can be.
        """
        self._kept[path] = (sock, name, clients)
        self._rescan = True

    def forget(self, sock, path):
        """*sock*, bound at *path*, is closing: keep nothing for it."""
        self.stale.pop(sock, None)
        if self.connections is not None:
            self.connections.forget_address(path)

    def check_files(self, outlets, limits):
        """Bind again every outlet of *outlets* whose socket file vanished,
        with the mode and group of *limits*.

        Someone may remove the IPC directory (or a file in it) under a
        running receiver: connected consumers keep their connections, but
        no new one can connect. Once a second, one ``stat`` of the
        directory notices it; only when the directory changed since (a
        file made or removed in it, or a new directory) one ``lstat`` per
        outlet finds the files that vanished. Once the directory is back
        each outlet binds its path again, keeping its backlog and order,
        and so do the sockets of :meth:`keep_bound`. The old listener is
        kept, not unbound: unbinding would cut the consumers still
        connected through it.
        """
        try:
            st = os.stat(self.ipc_dir)
        except OSError as exc:
            st, error = None, exc.strerror
        if st is None:
            self._gone(error, len(outlets))
            return
        self.dir_gone = False
        if self._dir_stat is False and not self._back(len(outlets)):
            return
        self._dir_stat = st
        if self._changed(st):
            self._rebind_all(outlets, limits)

    def _gone(self, error, count):
        """The directory is gone: say so once, with how to make it again."""
        self.dir_gone = True
        if self._dir_stat is False:
            return
        self._dir_stat, known = False, self._dir_stat
        fix = ''
        if known is not None:
            fix = ' (install -d -o %d -g %d -m %o %s)' % (
                known.st_uid, known.st_gid,
                known.st_mode & 0o7777, self.ipc_dir)
        LOG.error(
            'The IPC directory %s is gone (%s): the socket files '
            'of its %d outlets vanished with it, so no service can '
            'connect to them (those connected keep their '
            'connection) and new topics are refused (%s); recreate '
            'it, owned by the receiver\'s user%s: the receiver '
            'binds its sockets again within a second, and consumers '
            'reconnect by themselves', self.ipc_dir, error,
            count, metrics.IPC_DIR_MISSING, fix)

    def _back(self, count):
        """The directory is back: whether it is ours again (reclaim)."""
        failure = None
        if self.reclaim is not None:
            try:
                self.reclaim()
            except (errors.ReceiverError, OSError) as exc:
                failure = exc
        if failure is not None:
            # Another receiver's files now, or not ours to write: keep
            # off (logged outside the except block, or oslo.log would
            # append the exception to the line).
            self.warn.warning(
                'ipc-dir-taken', 'The IPC directory %s is back, but '
                'this receiver cannot lock it again: %s; its socket '
                'files are not bound again', self.ipc_dir, failure)
            return False
        LOG.warning('The IPC directory %s is back: binding the socket '
                    'files of %d outlets again', self.ipc_dir, count)
        return True

    def _changed(self, st):
        """Whether the files must be looked at: the directory changed
        since the last look, or a rescan is due."""
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        if key == self._dir_key and not self._rescan:
            return False
        self._dir_key = key
        # A change made within the timestamps' granularity of this stat
        # would leave them as they are: look again until they are older.
        self._rescan = time.time_ns() - st.st_mtime_ns < _RACY_NS
        return True

    def _rebind_all(self, outlets, limits):
        for outlet in outlets:
            if not self._rebind(outlet.socket, outlet.path, limits,
                                'Socket file', 'its consumers'):
                continue
            LOG.warning('Socket file %s had vanished: bound it again (%d '
                        'messages queued for it); its consumers reconnect '
                        'by themselves', outlet.path, outlet.queued)
        for path, (sock, name, clients) in list(self._kept.items()):
            if sock.closed:
                del self._kept[path]
                self.stale.pop(sock, None)
            elif self._rebind(sock, path, limits, name, clients):
                LOG.warning('%s %s was missing: binding it again; %s can '
                            'connect again', name, path, clients)

    def _rebind(self, sock, path, limits, name, clients):
        """Bind *sock* at *path* again if its file is missing; whether it
        was, and is bound again. A failure is logged (*name* and *clients*
        say what and for whom) and retried on the next check."""
        try:
            os.lstat(path)
            return False
        except FileNotFoundError:
            pass
        except OSError:
            self._rescan = True
            return False
        failure = None
        previous = _last_endpoint(sock)
        try:
            bind_ipc(sock, path, limits)
        except OSError as exc:
            failure = exc
        if failure is None:
            self.note_bound(sock, path)
            if previous:
                self._retire(sock, path, previous)
            return True
        self._rescan = True
        reason = ERRNO_REASONS.get(failure.errno, metrics.OUTLET_ERROR)
        self.warn.warning(
            'rebind-' + reason,
            '%s %s vanished and cannot be bound again (%s): %s; %s cannot '
            'connect until then', name, path, failure.strerror,
            fix_for(reason, self.ipc_dir), clients)
        return False

    def _retire(self, sock, path, endpoint):
        """Keep *sock*'s listener *endpoint*, whose file at *path*
        vanished, for the consumers still connected through it; unbind the
        oldest beyond STALE_LISTENERS."""
        stale = self.stale.setdefault(sock, collections.deque())
        stale.append(endpoint)
        while len(stale) > STALE_LISTENERS:
            oldest = stale.popleft()
            try:
                sock.unbind(oldest)
            except zmq.ZMQError:
                pass  # gone with the context, or never bound: nothing held
            if self.connections is not None:
                self.connections.unbound(path, oldest)
            self.counters.stale_listeners_closed += 1
            self.warn.warning(
                'stale-listener',
                'Socket file %s vanished again: unbound the listener of an '
                'older copy of it, so that removals cannot use up the '
                'receiver\'s descriptors; its consumers reconnect by '
                'themselves. If nobody should remove files in %s, find who '
                'does (auditctl -w %s -p wa); in a shared directory, chmod '
                '+t %s', path, self.ipc_dir, self.ipc_dir, self.ipc_dir)


class DescriptorBudget:
    """Whether the process has the descriptors for one more outlet.

    Counts the open descriptors in /proc/self/fd at most once a tick
    (:meth:`recount` asks for a new count), and adds FDS_PER_OUTLET for
    each outlet opened since (:meth:`opened`): a flood of new topics,
    refused or not, lists no directory per message. Closed outlets are not
    taken off until the next count.
    """

    def __init__(self):
        #: (soft RLIMIT_NOFILE, open descriptors) counted when a new
        #: outlet needs them (None: to count again), and the outlets
        #: opened since.
        self._fds = None
        self._opened = 0

    @property
    def limit(self):
        """The soft descriptor limit at the last count."""
        return self._fds[0] if self._fds is not None else _nofile()

    def recount(self):
        """Count the descriptors again when next asked (once a tick)."""
        self._fds = None

    def opened(self):
        """One more outlet is open (its descriptors, until the recount)."""
        self._opened += 1

    def short(self):
        """The reserve a new outlet would cut into (0: there is room;
        0 too where /proc is not)."""
        if self._fds is None:
            self._fds = (_nofile(), _open_descriptors())
            self._opened = 0
        limit, used = self._fds
        if used is None or limit == resource.RLIM_INFINITY:
            return 0
        used += self._opened * FDS_PER_OUTLET
        reserve = min(FD_RESERVE, limit // 8)
        return reserve if used + FDS_PER_OUTLET + reserve > limit else 0


def descriptors_needed(max_topics):
    """Descriptors *max_topics* outlets may use, with the reserve."""
    return FDS_PER_OUTLET * max_topics + FD_RESERVE


def _nofile():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _open_descriptors():
    """The process's open descriptors, from /proc/self/fd; None where
    /proc is not."""
    try:
        return len(os.listdir('/proc/self/fd'))
    except OSError:
        return None


def bind_ipc(sock, path, limits):
    """Bind *sock* at *path* with the mode and group of *limits*, never
    following a link someone put in the directory (:mod:`ipcfile`).

    Raises OSError when it cannot (a zmq.ZMQError, which is not one, is
    turned into one with the same errno). A stale file left by an earlier
    run, or anything else at *path*, is replaced.
    """
    ipcfile.bind(sock, path, limits.socket_mode, limits.socket_gid)


def _last_endpoint(sock):
    """The endpoint *sock* was last bound at ('' when never)."""
    try:
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    except zmq.ZMQError:
        return ''


def remove_socket_file(path):
    """Remove the socket file *path*; a failure is logged, not raised."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning('Cannot remove socket file %s: %s', path, exc.strerror)


def fix_for(reason, ipc_dir):
    """What the operator can do about a bind that failed for *reason*."""
    if reason == metrics.OUT_OF_DESCRIPTORS:
        return ('the process is out of file descriptors: raise its limit '
                '(LimitNOFILE= in the unit, ulimit -n) or lower '
                '[zmq_receiver] max_topics')
    if reason == metrics.IPC_PERMISSION:
        return ('the receiver (uid %d) may not create sockets in %s: make '
                'the directory writable for it' % (os.geteuid(), ipc_dir))
    if reason == metrics.IPC_DIR_MISSING:
        return ('the IPC directory %s is gone: recreate it (or restart '
                'the receiver, which creates it)' % ipc_dir)
    return 'see the error above'
