"""``check``: a preflight of this host before (or while) the receiver runs.

One line per check, ``PASS``, ``WARN`` or ``FAIL``, each failure with its
fix; the exit status is 1 when anything failed. Checked, in order:

- the config files parse and every value has its type;
- ``rpc_zmq_host`` resolves here, and to what;
- ``rpc_zmq_bind_address`` exists on this host, and ``rpc_zmq_port`` is free
  or held by the receiver of this IPC directory (asked on its control
  socket);
- the IPC directory is usable by the receiver's user (and, with
  ``--service-user``, its sockets by that service's user), and the longest
  socket path it needs fits;
- ``rpc_zmq_matchmaker`` names a matchmaker; with ``ring``, the ring file is
  valid and every host in it resolves; with ``redis``, the server (or each
  Sentinel and the master they name) answers, with the password given.

Nothing is changed: no directory is made and no port stays bound.

This module holds the report, the config, name and matchmaker checks and
:func:`run`, which runs them all in the order above; the bind check is in
:mod:`~zmq_receiver.admin.check_net`, the user, IPC directory and socket
checks in :mod:`~zmq_receiver.admin.check_files`.
"""

import ipaddress
import socket
import sys

from oslo_config import cfg

from zmq_receiver.admin import check_files
from zmq_receiver.admin import check_net
from zmq_receiver import errors
from zmq_receiver import matchmaker
from zmq_receiver import opts
from zmq_receiver.matchmaker import ring


def add_parser(subparsers):
    check = subparsers.add_parser(
        'check', help='preflight of this host: config, names, port, IPC '
                      'directory, matchmaker',
        description='Check that the receiver can run here with the given '
                    '--config-file; one PASS/WARN/FAIL line per check, '
                    'exit status 1 when any failed.')
    check.add_argument('--timeout', type=float, default=3.0,
                       help='seconds for each network question (default 3)')
    check.add_argument('--service-user', metavar='USER',
                       help='also check that USER (the service that '
                            'connects to the outlets) may use the sockets')
    check.add_argument('--receiver-user', metavar='USER',
                       help='the user the receiver runs as (a unit\'s '
                            'User=, which the config does not show); '
                            'default: [zmq_receiver] user, else the owner '
                            'of the IPC directory, else this user')


class Report:
    """Prints the lines and counts the failures."""

    def __init__(self, out):
        self.out = out
        self.failures = 0
        self.warnings = 0
        self.checks = 0

    def _line(self, status, name, text):
        self.checks += 1
        print('%s  %-11s %s' % (status, name, text), file=self.out,
              flush=True)

    def ok(self, name, text):
        self._line('PASS', name, text)

    def warn(self, name, text, fix=None):
        self.warnings += 1
        self._line('WARN', name, text + ('; fix: ' + fix if fix else ''))

    def fail(self, name, text, fix=None):
        self.failures += 1
        self._line('FAIL', name, text + ('; fix: ' + fix if fix else ''))

    def summary(self):
        print('%d checks: %d failed, %d warnings' % (
            self.checks, self.failures, self.warnings), file=self.out)
        return 1 if self.failures else 0


def config_error_line(exc, out=sys.stdout):
    """The line for config files that do not even parse."""
    report = Report(out)
    if isinstance(exc, cfg.ConfigFilesNotFoundError):
        report.fail('config', 'not found or unreadable: %s' % ', '.join(
            exc.config_files), 'check the --config-file path and that this '
                               'user may read it')
    elif isinstance(exc, cfg.ConfigFilesPermissionDeniedError):
        for path in exc.config_files:
            report.fail('config', *check_files.unreadable_config(path))
    elif isinstance(exc, cfg.ConfigFileParseError):
        report.fail('config', '%s cannot be parsed: %s' % (
            exc.config_file, exc.msg), 'correct the line it names')
    else:
        report.fail('config', str(exc), 'correct the option it names')
    return report.summary()


# -- names -----------------------------------------------------------------


def resolve(name):
    """The sorted addresses *name* resolves to here; raises OSError."""
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return sorted({info[4][0] for info in infos},
                  key=lambda a: (':' in a, a))


def _is_loopback(address):
    return ipaddress.ip_address(address.split('%')[0]).is_loopback


def _check_name(report, name, label, fix):
    try:
        addresses = resolve(name)
    except OSError as exc:
        report.fail(label, '%s does not resolve here (%s)' % (
            name, exc.strerror or exc), fix)
        return None
    report.ok(label, '%s resolves to %s' % (name, ', '.join(addresses)))
    return addresses


# -- the checks ------------------------------------------------------------


def _read_error(section, opt):
    """The error reading *opt* of *section* raises, or None."""
    try:
        getattr(section, opt.dest)
    except cfg.NoSuchOptError:
        return None  # the receiver's command-line options
    except (cfg.Error, ValueError) as exc:
        return exc
    return None


def _option_errors(conf):
    """``(group, opt, error)`` of each option whose value does not read,
    as it is read."""
    for group, group_opts in opts.list_opts():
        section = conf if group is None else conf[group]
        for opt in group_opts:
            exc = _read_error(section, opt)
            if exc is not None:
                yield group, opt, exc


def check_config(conf, report):
    """Every option read once: a value of the wrong type fails here."""
    files = list(conf.config_file or ())
    bad = 0
    for group, opt, exc in _option_errors(conf):
        bad += 1
        report.fail('config', '[%s] %s: %s' % (
            group or 'DEFAULT', opt.name, exc),
            'correct it in %s' % (', '.join(files) or 'the config'))
    if bad:
        return False
    if files:
        report.ok('config', 'parsed %s' % ', '.join(files))
    else:
        report.warn('config', 'no --config-file given: checking the '
                              'defaults', 'give the service\'s config file')
    return True


def check_host(conf, report):
    """The ``host`` lines: what ``rpc_zmq_host`` resolves to here (None
    when nothing), with a warning when only to loopback."""
    host = opts.rpc_zmq_host(conf)
    addresses = _check_name(
        report, host, 'host',
        'add it to DNS or /etc/hosts on every node, or set rpc_zmq_host to '
        'this host\'s name as the other hosts know it')
    if addresses and all(_is_loopback(a) for a in addresses):
        report.warn('host', 'rpc_zmq_host %s resolves only to loopback here'
                    % host, 'other hosts must resolve it to an address of '
                    'this one; check their DNS or /etc/hosts')
    return addresses


def check_matchmaker(conf, report, timeout):
    """The ``matchmaker`` line, then the checks of the matchmaker named."""
    try:
        name, deprecation = matchmaker.resolve_name(conf.rpc_zmq_matchmaker)
    except matchmaker.MatchMakerError as exc:
        report.fail('matchmaker', str(exc))
        return
    if deprecation:
        report.warn('matchmaker', deprecation)
    else:
        report.ok('matchmaker', 'rpc_zmq_matchmaker = %s' % name)
    if name == 'ring':
        check_ring(conf, report)
    elif name == 'redis':
        check_redis(conf, report, timeout)


def check_ring(conf, report):
    """The ``ring-file`` and ``ring-host`` lines: the ring file loads, and
    every host in it resolves here."""
    path = conf[opts.RING_GROUP].ringfile
    try:
        loaded = ring.load(path)
    except ring.RingFileError as exc:
        report.fail('ring-file', str(exc))
        return
    report.ok('ring-file', '%s: %d topics, %d hosts' % (
        path, len(loaded.topics), len(loaded.hosts())))
    for warning in loaded.warnings:
        report.warn('ring-file', warning)
    for host in loaded.hosts():
        _check_name(report, host, 'ring-host',
                    'add it to DNS or /etc/hosts on every node, or correct '
                    'the ring file')


def _check_heartbeat(conf, report):
    """The ``heartbeat`` line when the matchmaker's TTL and refresh do not
    fit; False when they cannot work at all."""
    ttl, freq = conf.matchmaker_heartbeat_ttl, conf.matchmaker_heartbeat_freq
    if ttl <= 0 or freq <= 0:
        report.fail('heartbeat', 'matchmaker_heartbeat_freq = %d and '
                    'matchmaker_heartbeat_ttl = %d must be positive' % (
                        freq, ttl), 'use the defaults, 300 and 600')
        return False
    if freq >= ttl:
        report.fail('heartbeat', 'matchmaker_heartbeat_freq (%d s) is not '
                    'below matchmaker_heartbeat_ttl (%d s): live services '
                    'expire between two refreshes' % (freq, ttl),
                    'make the TTL at least twice the frequency')
    return True


def check_redis(conf, report, timeout):
    """The ``heartbeat``, ``redis`` and ``sentinel`` lines: the
    heartbeat's timing, then whether the server (through each Sentinel,
    when there are) answers with the password given."""
    if not _check_heartbeat(conf, report):
        return
    group = conf[opts.REDIS_GROUP]
    try:
        # One try, no retries: the answer is what matters here.
        mm = matchmaker.redis_from_conf(
            conf, retries=0,
            socket_timeout=min(timeout, group.socket_timeout / 1000.0))
    except matchmaker.MatchMakerError as exc:
        report.fail('redis', str(exc))
        return
    with mm:
        if mm.sentinel is not None:
            for host, port in mm.sentinel_hosts:
                _check_sentinel(report, mm, host, port, timeout)
        try:
            line = mm.ping()
        except errors.ReceiverError as exc:
            report.fail('redis', str(exc))
            return
        report.ok('redis', '%s answers%s' % (
            line, ', password accepted' if mm.password else ''))


def _check_sentinel(report, mm, host, port, timeout):
    from zmq_receiver.matchmaker import redis as redis_mm
    client = redis_mm.redis.Redis(host, port, socket_timeout=timeout,
                                  socket_connect_timeout=timeout,
                                  decode_responses=True,
                                  retry=redis_mm.Retry(
                                      redis_mm.redis_backoff.NoBackoff(), 0))
    try:
        address = client.sentinel_get_master_addr_by_name(mm.sentinel_group)
    except redis_mm.redis_exc.RedisError as exc:
        report.fail('sentinel', '%s:%d does not answer (%s)' % (
            host, port, exc), 'start it, or correct [matchmaker_redis] '
            'sentinel_hosts')
        return
    finally:
        client.close()
    if not address:
        report.fail('sentinel', '%s:%d monitors no master called %r' % (
            host, port, mm.sentinel_group), 'set [matchmaker_redis] '
            'sentinel_group_name to the name in its sentinel monitor line')
        return
    report.ok('sentinel', '%s:%d names %s:%s the master of %r' % (
        host, port, address[0], address[1], mm.sentinel_group))


def run(conf, command, out=sys.stdout):
    """The ``check`` subcommand; the exit status."""
    report = Report(out)
    if not check_config(conf, report):
        return report.summary()
    addresses = check_host(conf, report)
    check_net.check_bind(conf, report, addresses, command.timeout)
    check_files.check_ipc_dir(conf, report, command.service_user,
                              command.receiver_user)
    check_matchmaker(conf, report, command.timeout)
    return report.summary()
