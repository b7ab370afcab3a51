"""The receiver's startup: ordered steps, one small function each.

:func:`run` calls the functions of :data:`BEFORE_LOCK`, then those of
:data:`UNDER_LOCK`, then :func:`serve`, each with the one :class:`Startup`
that carries what the steps before it produced. The order, and why:

1. ``parse``: the command line and the config files (oslo.config), every
   value read once (:func:`check_values`), so that a bad value fails now
   with its name, its file and the reason, before anything is touched;
2. ``read_values``: the receiver's settings checked and converted (the
   socket group looked up), for the same reason;
3. ``resolve_identity``: the user and group to run as; an unknown one is a
   configuration error, and the log file and the IPC directory are made
   for them, so they are known before either;
4. ``refuse_daemon_under_systemd``: ``--daemon`` contradicts the unit; a
   configuration error, before anything is touched;
5. ``connect_notifier``: systemd's notification socket is connected while
   the process may still reach it (before the privilege drop, see
   :mod:`zmq_receiver.notify`);
6. ``start_logging``: oslo.log set up, so that everything after is logged
   where the operator asked; the log file is made ready by root and opened
   with the run-as user's rights (:mod:`zmq_receiver.logfile`), so that
   it stays writable after the drop;
7. ``make_agent``: the matchmaker agent, before the directory and the
   lock: a matchmaker mistake is a configuration error, reported before
   anything is touched (Redis is contacted only from the agent's thread);
8. ``warn_if_root``: after the logging setup, so the warning is logged;
9. ``read_access_policy``: after the logging setup (it may warn about a
   key file's mode) and before the privilege drop: the secret key may be
   root's alone;
10. ``prepare_ipc_dir``: the IPC directory made ready (root may create it
    for the user), before the lock that lives in it;
11. ``choose_pid_file``: with ``--daemon``, that the run-as user may remove
    the pid file at exit, before anything is started;
12. ``take_lock``: the directory's lock, before any socket, so that a
    second receiver stops before it can steal the first one's files.

Then, holding the lock (released at the end whatever happens):

13. ``remove_stale_files``: socket files left by a receiver that did not
    stop in order; only under the lock can they not be a live one's;
14. ``detach``: with ``--daemon``, the fork, after the lock (its
    descriptor is kept, and it records the child's pid) and before any
    ``zmq.Context`` exists: a context's I/O threads do not survive a fork;
    the pid file is written by the child (supervisor's order);
15. ``raise_descriptors``: the descriptor limit raised before the bind,
    which sizes the connection caps from it;
16. ``guard_accept``: libzmq's accept on unix sockets guarded against
    EMFILE (see ``_wire.guard_accept``) before any unix socket binds: an
    unguarded libzmq aborts the process when a local user's connections
    take the last descriptor;
17. ``choose_wire``: the compiled forwarding path, or pure Python with the
    reason, chosen once, before the receiver and its outlets are built
    with it (wire.Implementation);
18. ``build_receiver``: the settings, built once with their final values,
    the reload callback (:class:`Reloader`) and the receiver;
19. ``bind``: the receiver takes over the signals first (a HUP or TERM
    must then wait for the loop instead of killing a process that already
    owns the port), then binds: a port below 1024 needs root;
20. ``start_exporter``: the metrics endpoint, after the receiver's bind
    (its ``/topics`` names the port the receiver got: ``rpc_zmq_port`` may
    be 0) and before the privilege drop (its port may be below 1024 too);
21. ``drop_privileges``: once every port is bound and every file root
    must open is open, before the first message is read;
22. ``announce``: after the drop, so that the line names who it runs as.

Last, :func:`serve` runs the loop until a signal stops it.
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
from zmq_receiver import control
from zmq_receiver import daemonize
from zmq_receiver import errors
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
from zmq_receiver import wire

# The logger name the startup's lines have always carried: operators'
# filters (and the journal's tests) match on it.
LOG = logging.getLogger('zmq_receiver.cli')
PROG = 'oslo-messaging-zmq-receiver'


class Startup:
    """What the startup steps produce, for the steps after them.

    Each attribute is set once, by the step named beside it; None (or
    False) until then.
    """

    def __init__(self, argv):
        #: The command line, without the program name.
        self.argv = argv
        self.conf = None            # parse
        #: receiver.Settings' keyword arguments but the final ipc_dir and
        #: access.
        self.values = None          # read_values
        self.ident = None           # resolve_identity
        self.notifier = None        # connect_notifier
        #: Whether oslo.log is set up: before, errors go to stderr only.
        self.logging_ready = False  # start_logging
        #: Whether the log goes to systemd's journal stream: then an error
        #: logged is not printed on stderr, the same stream, again.
        self.log_in_journal = False  # start_logging
        self.agent = None           # make_agent
        self.access = None          # read_access_policy
        self.ipc_dir = None         # prepare_ipc_dir
        self.pid_file = None        # choose_pid_file
        self.lock = None            # take_lock
        #: Who may read /topics (empty: nobody, it is off).
        self.topics_networks = ()   # build_receiver
        self.wire = None            # choose_wire
        self.receiver = None        # build_receiver
        self.endpoint = None        # bind
        self.exporter = None        # start_exporter

    @property
    def group(self):
        """The ``[zmq_receiver]`` options."""
        return self.conf[opts.GROUP]


# -- reading the configuration ----------------------------------------------


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
        raise _parse_exit(exc, captured.getvalue())
    except cfg.Error as exc:
        raise _parse_error(exc)
    sys.stderr.write(captured.getvalue())
    check_values(conf)
    return conf


def _parse_exit(exc, said):
    """What to raise for oslo.config's (argparse's) exit *exc*, which
    wrote *said* on stderr: --help and --version exit as they asked."""
    if exc.code == 1 and said.strip():
        return errors.ConfigError(
            'Invalid value in the config files: %s; fix it in the '
            'file' % said.strip().replace('argument --', 'option '))
    sys.stderr.write(said)
    return exc


def _parse_error(exc):
    """The ReceiverError for oslo.config's error *exc* at the start."""
    if isinstance(exc, cfg.ConfigFilesNotFoundError):
        return errors.ConfigError(
            'Config file not found or unreadable: %s; check the '
            '--config-file path and its permissions'
            % ', '.join(exc.config_files))
    if isinstance(exc, cfg.ConfigFilesPermissionDeniedError):
        return unreadable_config(exc.config_files)
    if isinstance(exc, cfg.ConfigFileParseError):
        return errors.ConfigError('Config file %s cannot be parsed: %s'
                                  % (exc.config_file, exc.msg))
    return errors.ConfigError(str(exc))


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
                raise _invalid_value(group, opt, exc)


def _invalid_value(group, opt, exc):
    """The ConfigError for *opt*'s value that did not convert (*exc*)."""
    # oslo.config words it "Value for option X from
    # LocationInfo(..., detail='<file>') is not valid: <why>".
    text = str(exc)
    reason = text.rsplit(' is not valid: ', 1)[-1]
    found = re.search(r"detail='([^']*)'", text)
    where = found.group(1) if found else 'the configuration'
    return errors.ConfigError(
        '[%s] %s in %s: %s' % (group or 'DEFAULT', opt.dest, where, reason))


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


def settings_values(conf):
    """:class:`receiver.Settings`' keyword arguments from *conf*, every
    value read and checked once (ConfigError on a bad one); ``ipc_dir`` is
    the configured path, not yet made ready, and ``access`` is left out."""
    try:
        group = conf[opts.GROUP]
        return dict(
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


def settings_from(conf, **final):
    """The :class:`receiver.Settings` from *conf*; *final* gives the values
    known only later in the startup (``ipc_dir`` made ready, ``access``)."""
    values = settings_values(conf)
    values.update(final)
    return receiver.Settings(**values)


class Reloader:
    """What a SIGHUP changes, in one place: the config files, re-read, the
    outlet limits they give, and the matchmaker agent's grace period.

    The receiver calls it on SIGHUP; it returns the new
    :class:`outlets.Limits` or raises ConfigError, and the receiver then
    keeps the running settings.
    """

    def __init__(self, conf, agent=None):
        self.conf = conf
        #: The matchmaker agent (agent.Agent), or None.
        self.agent = agent

    def __call__(self):
        self._read_files()
        limits = settings_values(self.conf)['limits']
        if self.agent is not None:
            self.agent.reload(self.conf[opts.GROUP].agent_grace_period)
        return limits

    def _read_files(self):
        try:
            self.conf.mutate_config_files()
        except cfg.ConfigFilesNotFoundError as exc:
            raise errors.ConfigError(
                'Config file not found or unreadable: %s; restore it '
                'and send SIGHUP again' % ', '.join(exc.config_files))
        except cfg.ConfigFilesPermissionDeniedError as exc:
            raise errors.ConfigError('%s; then send SIGHUP again'
                                     % unreadable_config(exc.config_files))
        except (cfg.Error, SystemExit) as exc:
            # argparse (under oslo.config) exits on some parse errors.
            raise errors.ConfigError(
                'Config files cannot be read again: %s; fix them and '
                'send SIGHUP again' % exc)


# -- helpers of the steps ----------------------------------------------------


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


def pid_file_path(conf, ipc_dir):
    """Where ``--daemon`` writes its pid: [zmq_receiver] pid_file, or a
    file in the IPC directory."""
    return os.path.abspath(conf[opts.GROUP].pid_file or os.path.join(
        ipc_dir, '.zmq-receiver.pid'))


def check_pid_file_dir(path, ident):
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


def report_failure(boot, error):
    """Say *error* (a ReceiverError that stopped the start or the run):
    in the log once it is set up, and on stderr, which the operator reads,
    unless that is where the log already went."""
    if boot.logging_ready:
        LOG.error('%s', error)
    if not boot.log_in_journal:
        print(journal.error_line('%s: error: %s' % (PROG, error),
                                 sys.stderr), file=sys.stderr)


# -- the steps, in their order ----------------------------------------------


def parse(boot):
    """Parse the command line and the config files."""
    boot.conf = load_config(boot.argv)


def read_values(boot):
    """Read and check the receiver's settings."""
    boot.values = settings_values(boot.conf)


def resolve_identity(boot):
    """Look up the user and group to run as."""
    boot.ident = privileges.resolve(boot.group.user, boot.group.group)


def refuse_daemon_under_systemd(boot):
    """Raise ConfigError for --daemon in a systemd unit."""
    if boot.conf.daemon and notify.under_systemd():
        raise errors.ConfigError(
            '--daemon under systemd (NOTIFY_SOCKET is set): systemd '
            'supervises the process itself; remove --daemon from the unit')


def connect_notifier(boot):
    """Connect systemd's notification socket (a no-op outside systemd)."""
    boot.notifier = notify.Notifier()


def start_logging(boot):
    """Set up oslo.log (and adopt the journal stream when it is one)."""
    if boot.conf.use_journal:
        journal.require_bindings()
    setup_logging(boot.conf, boot.ident)
    boot.logging_ready = True
    boot.log_in_journal = journal.adopt(keep_format=boot.conf.use_json)


def make_agent(boot):
    """The matchmaker agent, when [zmq_receiver] matchmaker_agent asks."""
    if boot.group.matchmaker_agent:
        # Imported only when asked for: a receiver without the agent need
        # not hold its modules in memory.
        from zmq_receiver.matchmaker import agent as agent_mod
        boot.agent = agent_mod.from_conf(boot.conf)


def warn_if_root(boot):
    """Warn when root would stay root."""
    if os.geteuid() == 0 and boot.ident.uid == 0:
        LOG.warning('RUNNING AS ROOT: set [zmq_receiver] user (for example '
                    'to the service\'s own user) so that a flaw in the '
                    'receiver cannot give the network root on this host')


def read_access_policy(boot):
    """Read the allow-list and the CURVE keys."""
    boot.access = access.policy_from(boot.conf)


def prepare_ipc_dir(boot):
    """Make the IPC directory ready for the run-as user."""
    boot.ipc_dir = rundir.prepare(
        boot.values['ipc_dir'], boot.ident,
        mode=opts.ipc_dir_mode(boot.conf),
        gid=boot.values['limits'].socket_gid,
        allow_world_writable=boot.group.allow_world_writable)


def choose_pid_file(boot):
    """With --daemon: choose the pid file and check its directory."""
    if boot.conf.daemon:
        boot.pid_file = pid_file_path(boot.conf, boot.ipc_dir)
        check_pid_file_dir(boot.pid_file, boot.ident)


def take_lock(boot):
    """Lock the IPC directory for this receiver."""
    lock = rundir.InstanceLock(boot.ipc_dir)
    # In the directory with the run-as user's rights, root's own once
    # privileges are dropped: it is the user's, and whoever may write its
    # parent could have made the path lead anywhere since prepare() looked.
    with privileges.acting_as(boot.ident):
        lock.acquire(owner=boot.ident)
    boot.lock = lock


def remove_stale_files(boot):
    """Remove the socket files a receiver that died left behind."""
    with privileges.acting_as(boot.ident):
        try:
            stale = rundir.remove_stale_sockets(
                boot.ipc_dir, (routing.SOCKET_PREFIX, control.NAME))
            stale += ipcfile.remove_stale(boot.ipc_dir)
        except OSError as exc:
            # Replaced since prepare() looked, by whoever may write its
            # parent, at any point of the two cleanings
            # (test_security_files races it), or its permissions changed:
            # refused, not an internal error.
            raise errors.PermissionProblem(
                'Cannot clean the IPC directory %s: %s; make sure that only '
                'the receiver\'s user may write it and its parent' % (
                    boot.ipc_dir, exc.strerror)) from None
    if stale:
        LOG.warning('Removed %d socket files left in %s by a receiver '
                    'that did not stop in order', stale, boot.ipc_dir)


def detach(boot):
    """With --daemon: fork into the background, keeping the lock."""
    if boot.conf.daemon:
        daemonize.detach(boot.pid_file, [boot.lock.fileno()], boot.ident)
        boot.lock.update_pid()


def raise_descriptors(boot):
    """Raise the descriptor limit to what the topics and connections
    need."""
    raise_descriptor_limit(
        outlets.descriptors_needed(boot.values['limits'].max_topics) +
        (boot.values['max_connections'] or receiver.DEFAULT_CONNECTIONS))


def guard_accept(boot):
    """Keep libzmq from aborting on a unix accept that finds no
    descriptor; warn when it cannot be kept from it."""
    if not wire.guard_accept():
        LOG.warning('libzmq aborts the receiver if it cannot accept a '
                    'connection to an outlet or the control socket for '
                    'want of a descriptor, and it cannot be kept from '
                    'it because %s; run with a high LimitNOFILE= '
                    '(ulimit -n)', wire.ACCEPT_GUARD_PROBLEM)


def choose_wire(boot):
    """The forwarding implementation, compiled when it can be."""
    boot.wire = wire.implementation()


def build_receiver(boot):
    """The settings, with their final values, and the receiver."""
    networks = ()
    state = None
    if boot.group.metrics_port is not None:
        # Imported only with metrics_port set: prometheus_client and the
        # HTTP server are memory a receiver without metrics need not hold.
        from zmq_receiver import exporter as exporter_mod
        # Read before the bind: a bad value stops the start before the
        # port is taken.
        networks = access.parse_networks(
            boot.group.topics_allowed_networks, 'topics_allowed_networks')
        state = exporter_mod.LoopState()
    settings = receiver.Settings(
        **dict(boot.values, ipc_dir=boot.ipc_dir, access=boot.access))
    boot.topics_networks = networks
    # reclaim: should the IPC directory be removed and made again while it
    # runs, the receiver locks it again before it binds there.
    boot.receiver = receiver.Receiver(
        settings, reload=Reloader(boot.conf, boot.agent),
        notifier=boot.notifier, state=state, agent=boot.agent,
        reclaim=boot.lock.reacquire, implementation=boot.wire)


def bind(boot):
    """Take over the signals and bind the receiver's ports."""
    boot.endpoint = boot.receiver.bind()


def start_exporter(boot):
    """Bind and start the metrics endpoint, when asked for."""
    group = boot.group
    state = boot.receiver.state
    if state is None:
        return
    # Here rather than at the top: only with metrics_port set, whose
    # exporter (and prometheus_client) a receiver without it need not
    # hold in memory; build_receiver imported them already.
    from zmq_receiver import exporter as exporter_mod
    from zmq_receiver import topics_doc
    topics = None
    if boot.topics_networks:
        topics = topics_doc.TopicsApp(
            state, opts.rpc_zmq_host(boot.conf),
            int(boot.endpoint.rsplit(':', 1)[1]), boot.topics_networks)
    boot.exporter = exporter_mod.Exporter(
        group.metrics_address, group.metrics_port, state,
        group.metrics_top_topics, topics=topics)
    url = boot.exporter.bind()
    boot.exporter.start()
    LOG.info('Metrics on %s/metrics, health on %s/healthz and '
             '%s/readyz', url, url, url)
    if topics is not None:
        LOG.info('Topics document on %s/topics for %s', url,
                 ', '.join(str(n) for n in topics.networks))


def drop_privileges(boot):
    """Become the run-as user for good."""
    privileges.drop(boot.ident)


def announce(boot):
    """Log how it forwards and what it listens on."""
    if boot.wire.compiled:
        LOG.info('Forwarding loop: %s', boot.wire.name)
    else:
        LOG.warning('Forwarding loop: pure Python, at about three times '
                    'the CPU per message, because %s; to compile it, '
                    'install gcc and the Python headers and reinstall '
                    'the package', boot.wire.problem)
    settings = boot.receiver.settings
    limits = settings.limits
    LOG.info(
        '%s %s listening on %s, forwarding to %s as %r; limits: '
        '%d messages per topic, %d bytes in all backlogs, %d topics, '
        'idle outlets closed after %g s, join window %g s, '
        'messages up to %d bytes', PROG, __version__, boot.endpoint,
        settings.ipc_dir, privileges.current(), limits.backlog,
        limits.backlog_bytes, limits.max_topics, limits.idle_timeout,
        limits.join_window, settings.max_message_size)


def serve(boot):
    """Run the loop until a signal stops it; then stop the exporter."""
    try:
        boot.receiver.run()
    finally:
        if boot.exporter is not None:
            boot.exporter.stop()


#: The steps before the IPC directory's lock: a failure just exits.
BEFORE_LOCK = (parse, read_values, resolve_identity,
               refuse_daemon_under_systemd, connect_notifier, start_logging,
               make_agent, warn_if_root, read_access_policy, prepare_ipc_dir,
               choose_pid_file, take_lock)
#: The steps holding the lock, which :func:`run` releases after them.
UNDER_LOCK = (remove_stale_files, detach, raise_descriptors, guard_accept,
              choose_wire, build_receiver, bind, start_exporter,
              drop_privileges, announce)


def run(boot):
    """Start (the steps of BEFORE_LOCK, then UNDER_LOCK) and serve;
    raises ReceiverError on failure, returns the exit status otherwise."""
    # Before anything logs: see journal.start_handler.
    journal.start_handler()
    for step in BEFORE_LOCK:
        step(boot)
    try:
        for step in UNDER_LOCK:
            step(boot)
        serve(boot)
    finally:
        boot.lock.release()
    return errors.EXIT_OK
