"""``oslo-messaging-zmq-receiver``: parse, check, bind, forward, exit.

The startup order, and why:

1. parse the command line and config files (oslo.config), and read every
   value once, so that a bad value fails now with its name, not later;
2. set up logging (oslo.log), so that everything after is logged where the
   operator asked;
3. make the IPC directory ready and take its lock, before any socket, so
   that a second receiver stops before it can steal the first one's files;
4. bind the TCP port;
5. run the loop until a signal stops it.

Every failure before the loop is one line on stderr (and in the log) and an
exit status from :mod:`zmq_receiver.errors`; never a traceback for an
operator's mistake.
"""

import contextlib
import io
import logging
import os
import re
import resource
import sys

from oslo_config import cfg
from oslo_log import log as oslo_log

from zmq_receiver import __version__
from zmq_receiver import access
from zmq_receiver import agent as agent_mod
from zmq_receiver import control
from zmq_receiver import daemonize
from zmq_receiver import errors
from zmq_receiver import exporter as exporter_mod
from zmq_receiver import ipcfile
from zmq_receiver import journal
from zmq_receiver import logfile
from zmq_receiver import notify
from zmq_receiver import opts
from zmq_receiver import outlets
from zmq_receiver import privileges
from zmq_receiver import receiver
from zmq_receiver import routing
from zmq_receiver import rundir
from zmq_receiver import topics_doc
from zmq_receiver import wire

LOG = logging.getLogger(__name__)
PROG = 'oslo-messaging-zmq-receiver'

#: Whether oslo.log is set up: before, errors go to stderr only.
_logging_ready = False
#: Whether the log goes to systemd's journal stream (JOURNAL_STREAM): then
#: an error logged is not printed on stderr, the same stream, again.
_log_in_journal = False


def load_config(argv):
    """Parse *argv* (without the program name) into a new ConfigOpts.

    Every value the receiver declares is read and checked here, so that a
    wrong one stops the start with its name, its file and the reason.
    """
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    opts.register_cli_opts(conf)
    oslo_log.register_options(conf)
    captured = io.StringIO()
    try:
        # oslo.config reports a bad value of a command-line option found
        # in a config file (debug = maybe) on stderr, worded as if it came
        # from the command line, and exits 1: catch it and say it plainly.
        with contextlib.redirect_stderr(captured):
            # No implicit config file: the operator names the service's own.
            conf(argv, project=PROG, prog=PROG, version=__version__,
                 default_config_files=[])
    except SystemExit as exc:
        said = captured.getvalue().strip()
        if exc.code == 1 and said:
            raise errors.ConfigError(
                'Invalid value in the config files: %s; fix it in the '
                'file' % said.replace('argument --', 'option '))
        sys.stderr.write(captured.getvalue())
        raise
    except cfg.ConfigFilesNotFoundError as exc:
        raise errors.ConfigError(
            'Config file not found or unreadable: %s; check the '
            '--config-file path and its permissions'
            % ', '.join(exc.config_files))
    except cfg.ConfigFilesPermissionDeniedError as exc:
        raise unreadable_config(exc.config_files)
    except cfg.ConfigFileParseError as exc:
        raise errors.ConfigError('Config file %s cannot be parsed: %s'
                                 % (exc.config_file, exc.msg))
    except cfg.Error as exc:
        raise errors.ConfigError(str(exc))
    sys.stderr.write(captured.getvalue())
    check_values(conf)
    return conf


def unreadable_config(paths):
    """The PermissionProblem for config files we may not read."""
    who = privileges.current()
    groups = sorted(os.getgroups() or [who.gid])
    return errors.PermissionProblem(
        'Config file %s: permission denied for %s (groups %s); make it '
        'readable for one of them (for example chgrp %s %s; chmod 0640 '
        '%s), and under systemd add a group with SupplementaryGroups= '
        'rather than Group=, which replaces the user\'s own group' % (
            ', '.join(paths), who.label,
            ', '.join(privileges.group_label(gid) for gid in groups),
            privileges.group_label(who.gid), paths[0], paths[0]))


def check_values(conf):
    """Read every option the receiver declares; raise ConfigError on one
    that does not convert, naming the option and where it was set."""
    for group, group_opts in opts.list_opts():
        for opt in group_opts:
            try:
                getattr(conf[group] if group else conf, opt.dest)
            except (cfg.ConfigFileValueError, ValueError) as exc:
                # oslo.config words it "Value for option X from
                # LocationInfo(..., detail='<file>') is not valid: <why>".
                text = str(exc)
                reason = text.rsplit(' is not valid: ', 1)[-1]
                found = re.search(r"detail='([^']*)'", text)
                where = found.group(1) if found else 'the configuration'
                raise errors.ConfigError(
                    '[%s] %s in %s: %s' % (group or 'DEFAULT', opt.dest,
                                           where, reason))


def limits_from(conf):
    """The outlet limits from *conf* (mutable ones may change on reload)."""
    group = conf[opts.GROUP]
    gid = -1
    if group.socket_group:
        gid = privileges.group_id(group.socket_group, 'socket_group')
    return outlets.Limits(
        backlog=conf.rpc_zmq_topic_backlog,
        backlog_bytes=group.max_backlog_bytes,
        max_topics=group.max_topics,
        idle_timeout=group.idle_timeout,
        join_window=group.join_window,
        socket_mode=opts.socket_mode(conf),
        socket_gid=gid)


def settings_from(conf):
    """Read and check every value the receiver uses, once."""
    try:
        group = conf[opts.GROUP]
        return receiver.Settings(
            bind_address=conf.rpc_zmq_bind_address,
            port=conf.rpc_zmq_port,
            ipc_dir=os.path.abspath(conf.rpc_zmq_ipc_dir),
            limits=limits_from(conf),
            max_message_size=group.max_message_size,
            io_threads=conf.rpc_zmq_contexts,
            shutdown_timeout=group.shutdown_timeout,
            log_interval=group.log_interval,
            max_connections=group.max_connections,
            max_frames=group.max_frames)
    except (cfg.Error, ValueError) as exc:
        raise errors.ConfigError(str(exc))


def raise_descriptor_limit(wanted):
    """Raise the soft RLIMIT_NOFILE towards *wanted* (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        LOG.warning('The descriptor limit is %d, but [zmq_receiver] '
                    'max_topics and max_connections want up to %d: topics '
                    'and connections beyond what fits will be refused; '
                    'raise LimitNOFILE= (ulimit -n)', target, wanted)
    return target


def check_pid_file(path, ident):
    """Raise PermissionProblem unless *ident*, who removes the pid file at
    exit after the privilege drop, may do so in its directory."""
    directory = os.path.dirname(path)
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise errors.PermissionProblem(
            'Directory %s of the pid file %s: %s; create it or set '
            '[zmq_receiver] pid_file' % (directory, path, exc.strerror))
    if not rundir.writable_by(st, ident):
        raise errors.PermissionProblem(
            'The pid file %s is in %s, where %s cannot remove it when it '
            'stops: set [zmq_receiver] pid_file to a path in a directory '
            'that %s may write (for example its IPC directory)' % (
                path, directory, ident.label, ident.label))


def setup_logging(conf, ident):
    """oslo.log's setup, its log file opened as :mod:`logfile` says:
    made ready by root, opened by oslo.log with *ident*'s rights."""
    path = logfile.path_of(conf) if os.geteuid() == 0 else None
    held = logfile.prepare(path, ident) if path else None
    acting = (privileges.acting_as(ident) if held is not None
              else contextlib.nullcontext())
    try:
        with acting:
            oslo_log.setup(conf, PROG, __version__)
    except OSError as exc:
        raise logfile.cannot_open(exc.filename, exc.strerror)
    finally:
        if held is not None:
            os.close(held)
    if held is not None:
        logfile.open_as(ident)


def run(argv):
    """Everything :func:`main` does, raising ReceiverError on failure."""
    conf = load_config(argv)
    settings = settings_from(conf)
    group = conf[opts.GROUP]
    ident = privileges.resolve(group.user, group.group)
    if conf.daemon and notify.under_systemd():
        raise errors.ConfigError(
            '--daemon under systemd (NOTIFY_SOCKET is set): systemd '
            'supervises the process itself; remove --daemon from the unit')
    # Connected now, before the privilege drop: see zmq_receiver.notify.
    notifier = notify.Notifier()
    global _logging_ready, _log_in_journal
    if conf.use_journal:
        journal.require_bindings()
    setup_logging(conf, ident)
    _logging_ready = True
    _log_in_journal = journal.adopt(keep_format=conf.use_json)
    agent = None
    if group.matchmaker_agent:
        # Before the directory and the lock: a matchmaker mistake is a
        # configuration error, reported before anything is touched. Redis
        # is not contacted here, only from the agent's thread.
        agent = agent_mod.from_conf(conf)
    if os.geteuid() == 0 and ident.uid == 0:
        LOG.warning('RUNNING AS ROOT: set [zmq_receiver] user (for example '
                    'to the service\'s own user) so that a flaw in the '
                    'receiver cannot give the network root on this host')
    # After the logging setup (it may warn about a key file's mode), and
    # before the privilege drop: the secret key may be root's alone.
    settings.access = access.policy_from(conf)
    settings.ipc_dir = rundir.prepare(
        settings.ipc_dir, ident, mode=opts.ipc_dir_mode(conf),
        gid=settings.limits.socket_gid,
        allow_world_writable=group.allow_world_writable)
    pid_file = None
    if conf.daemon:
        pid_file = os.path.abspath(group.pid_file or os.path.join(
            settings.ipc_dir, '.zmq-receiver.pid'))
        check_pid_file(pid_file, ident)
    lock = rundir.InstanceLock(settings.ipc_dir)
    # In the directory with the run-as user's rights, root's own once
    # privileges are dropped: it is the user's, and whoever may write its
    # parent could have made the path lead anywhere since prepare() looked.
    with privileges.acting_as(ident):
        lock.acquire(owner=ident)
    try:
        with privileges.acting_as(ident):
            stale = rundir.remove_stale_sockets(
                settings.ipc_dir,
                (routing.SOCKET_PREFIX, control.NAME))
            stale += ipcfile.remove_stale(settings.ipc_dir)
        if stale:
            LOG.warning('Removed %d socket files left in %s by a receiver '
                        'that did not stop in order', stale, settings.ipc_dir)
        if conf.daemon:
            daemonize.detach(pid_file, [lock.fileno()], ident)
            lock.update_pid()
        limits = settings.limits
        raise_descriptor_limit(
            outlets.descriptors_needed(limits.max_topics) +
            (settings.max_connections or receiver.DEFAULT_CONNECTIONS))

        def reload():
            try:
                conf.mutate_config_files()
            except cfg.ConfigFilesNotFoundError as exc:
                raise errors.ConfigError(
                    'Config file not found or unreadable: %s; restore it '
                    'and send SIGHUP again' % ', '.join(exc.config_files))
            except cfg.ConfigFilesPermissionDeniedError as exc:
                raise errors.ConfigError('%s; then send SIGHUP again'
                                         % unreadable_config(
                                             exc.config_files))
            except (cfg.Error, SystemExit) as exc:
                # argparse (under oslo.config) exits on some parse errors.
                raise errors.ConfigError(
                    'Config files cannot be read again: %s; fix them and '
                    'send SIGHUP again' % exc)
            reloaded = settings_from(conf)
            if agent is not None:
                agent.reload(conf[opts.GROUP].agent_grace_period)
            return reloaded.limits

        exporter = None
        state = None
        if group.metrics_port is not None:
            state = exporter_mod.LoopState()
            topics = None
            networks = access.parse_networks(group.topics_allowed_networks,
                                             'topics_allowed_networks')
            if networks:
                topics = topics_doc.TopicsApp(
                    state, opts.rpc_zmq_host(conf), conf.rpc_zmq_port,
                    networks)
            exporter = exporter_mod.Exporter(
                group.metrics_address, group.metrics_port, state,
                group.metrics_top_topics, topics=topics)
        # Before any unix socket binds: libzmq could abort on its accepts.
        if not wire.guard_accept():
            LOG.warning('libzmq aborts the receiver if it cannot accept a '
                        'connection to an outlet or the control socket for '
                        'want of a descriptor, and it cannot be kept from '
                        'it because %s; run with a high LimitNOFILE= '
                        '(ulimit -n)', wire.ACCEPT_GUARD_PROBLEM)
        recv = receiver.Receiver(settings, reload=reload, notifier=notifier,
                                 state=state, agent=agent)
        # Bind first: a port below 1024 needs root.
        endpoint = recv.bind()
        # Should the IPC directory be removed and made again while it
        # runs, the receiver locks it again before it binds there.
        recv.outlets.reclaim = lock.reacquire
        if exporter is not None:
            if exporter.topics is not None:
                # rpc_zmq_port may be 0: the port it got.
                exporter.topics.port = int(endpoint.rsplit(':', 1)[1])
            url = exporter.bind()
            exporter.start()
            LOG.info('Metrics on %s/metrics, health on %s/healthz and '
                     '%s/readyz', url, url, url)
            if exporter.topics is not None:
                LOG.info('Topics document on %s/topics for %s', url,
                         ', '.join(str(n) for n in exporter.topics.networks))
        privileges.drop(ident)
        if wire.use_compiled():
            LOG.info('Forwarding loop: compiled (zmq_receiver._wire)')
        else:
            LOG.warning('Forwarding loop: pure Python, at about three times '
                        'the CPU per message, because %s; to compile it, '
                        'install gcc and the Python headers and reinstall '
                        'the package', wire.FAST_PROBLEM)
        LOG.info(
            '%s %s listening on %s, forwarding to %s as %r; limits: '
            '%d messages per topic, %d bytes in all backlogs, %d topics, '
            'idle outlets closed after %g s, join window %g s, '
            'messages up to %d bytes', PROG, __version__, endpoint,
            settings.ipc_dir, privileges.current(), limits.backlog,
            limits.backlog_bytes, limits.max_topics, limits.idle_timeout,
            limits.join_window, settings.max_message_size)
        try:
            recv.run()
        finally:
            if exporter is not None:
                exporter.stop()
    finally:
        lock.release()
    return errors.EXIT_OK


def main(argv=None):
    """Console entry point; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    journal.start_handler()
    try:
        return run(argv)
    except errors.ReceiverError as exc:
        error = exc
    except Exception:
        LOG.exception('Internal error; please report it with this log')
        return errors.EXIT_INTERNAL
    # Outside the except block: oslo.log would append the exception being
    # handled to an error line, repeating the message.
    if _logging_ready:
        LOG.error('%s', error)
    # The log may be a file or stdout; the operator reads stderr.
    if not _log_in_journal:
        print(journal.error_line('%s: error: %s' % (PROG, error),
                                 sys.stderr), file=sys.stderr)
    return error.exit_code
