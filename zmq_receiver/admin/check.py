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
"""

import errno
import fcntl
import grp
import ipaddress
import os
import pwd
import socket
import stat
import struct
import sys

from oslo_config import cfg

from zmq_receiver.admin import client
from zmq_receiver import control
from zmq_receiver import endpoints
from zmq_receiver import errors
from zmq_receiver import matchmaker
from zmq_receiver import opts
from zmq_receiver import privileges
from zmq_receiver import procfs
from zmq_receiver import routing
from zmq_receiver import rundir
from zmq_receiver.matchmaker import ring

SIOCGIFADDR = 0x8915


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
            report.fail('config', *unreadable_config(path))
    elif isinstance(exc, cfg.ConfigFileParseError):
        report.fail('config', '%s cannot be parsed: %s' % (
            exc.config_file, exc.msg), 'correct the line it names')
    else:
        report.fail('config', str(exc), 'correct the option it names')
    return report.summary()


def unreadable_config(path):
    """(text, fix) for config file *path*, which this process may not read
    (as the receiver would exit 77 for it): whose it is and its mode, and
    what would let this user read it."""
    who = privileges.current()
    # The groups this process has, which a unit's Group= or sudo -g may
    # make other than the user's own.
    gids = set(os.getgroups()) | {os.getegid()}
    text = 'cannot read %s as %s (permission denied)' % (path, who.label)
    alternative = '' if who.uid == 0 else ', or run check as root'
    try:
        blocked = _unreachable(os.path.dirname(os.path.abspath(path)),
                               who.uid, gids)
        if blocked:
            return ('%s: it may not enter %s' % (text, blocked),
                    'chmod o+x %s, or give %s its group%s' % (
                        blocked, who.label, alternative))
        st = os.stat(path)
    except OSError as exc:
        return ('%s: %s' % (text, exc.strerror),
                'make it and its directories readable for %s%s'
                % (who.label, alternative))
    mode = stat.S_IMODE(st.st_mode)
    group = _group_label(st.st_gid)
    text += ': it is %04o %s:%s' % (mode, _user_label(st.st_uid), group)
    if st.st_uid == who.uid:
        fix = 'chmod u+r %s' % path
    elif st.st_gid in gids:
        fix = 'chmod g+r %s' % path
    elif mode & stat.S_IRGRP:
        fix = 'add %s to group %s (usermod -a -G %s %s)' % (
            who.label, group, group, who.label)
        if st.st_gid in who.groups():
            # Its account has the group, this process does not.
            fix = 'run check with the groups of %s (runuser -u %s --)' % (
                who.label, who.label)
    else:
        fix = 'chgrp %s %s; chmod g+r %s' % (
            _group_label(who.gid), path, path)
    return text, fix + alternative


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


def check_config(conf, report):
    """Every option read once: a value of the wrong type fails here."""
    files = list(conf.config_file or ())
    bad = 0
    for group, group_opts in opts.list_opts():
        section = conf if group is None else conf[group]
        for opt in group_opts:
            try:
                getattr(section, opt.dest)
            except cfg.NoSuchOptError:
                continue  # the receiver's command-line options
            except (cfg.Error, ValueError) as exc:
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


def interface_ipv4(name):
    """The IPv4 address of interface *name*, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                 struct.pack('256s', name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _bind_target(address):
    """``(family, address, label)`` the receiver would bind for
    ``rpc_zmq_bind_address``, or raises ValueError with the reason."""
    address = address.strip()
    if address == '*':
        if socket.has_ipv6:
            return socket.AF_INET6, '::', 'every address'
        return socket.AF_INET, '0.0.0.0', 'every address'
    bare = address[1:-1] if address.startswith('[') else address
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        names = [n for _, n in socket.if_nameindex()]
        if bare not in names:
            raise ValueError(
                '%s is neither *, an IP address nor an interface of this '
                'host (interfaces: %s)' % (address, ', '.join(names)))
        ipv4 = interface_ipv4(bare)
        if ipv4 is None:
            raise ValueError('interface %s has no IPv4 address, which the '
                             'receiver binds' % bare)
        return socket.AF_INET, ipv4, 'interface %s (%s)' % (bare, ipv4)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, str(ip), str(ip)


def _try_bind(family, address, port):
    """Bind and release at once, as libzmq would bind; the OSError or
    None."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if family == socket.AF_INET6 and address == '::':
            # IPv6 is off on this host; libzmq binds IPv4 then.
            return _try_bind(socket.AF_INET, '0.0.0.0', port)
        return exc
    try:
        # libzmq sets SO_REUSEADDR: a port in TIME_WAIT is free for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address == '::':
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
        sock.listen(1)
    except OSError as exc:
        return exc
    finally:
        sock.close()
    return None


def listener_pids(port):
    """Pids of the processes listening on TCP *port*, where /proc tells
    (another user's processes are visible to root only)."""
    inodes = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    listening = state == '0A'  # TCP_LISTEN
                    if listening and int(local.rsplit(':', 1)[1], 16) == port:
                        inodes.add('socket:[%s]' % inode)
        except OSError:
            continue
    if not inodes:
        return set()
    return procfs.pids_with_descriptor(
        lambda fd_path: os.readlink(fd_path) in inodes)


def _command_name(pid):
    try:
        with open('/proc/%d/comm' % pid) as f:
            return f.read().strip()
    except OSError:
        return '?'


def _lock_pid(ipc_dir):
    try:
        with open(os.path.join(ipc_dir, rundir.LOCK_NAME)) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _receiver_answers(ipc_dir, timeout):
    if not os.path.exists(control.path(ipc_dir)):
        return False
    try:
        client.ask(ipc_dir, control.STATS, timeout)
    except errors.ReceiverError:
        return False
    return True


def check_bind(conf, report, host_addresses, timeout):
    address, port = conf.rpc_zmq_bind_address, conf.rpc_zmq_port
    endpoint, _ = endpoints.tcp_endpoint(address, port)
    try:
        family, ip, label = _bind_target(address)
    except ValueError as exc:
        report.fail('bind', str(exc), 'set rpc_zmq_bind_address to *, an '
                    'address of this host or one of its interface names')
        return
    if address.strip() != '*':
        problem = _try_bind(family, ip, 0)
        if problem is not None and problem.errno == errno.EADDRNOTAVAIL:
            report.fail('bind', 'rpc_zmq_bind_address %s is not an address '
                        'of this host' % address, 'set it to *, an address '
                        'of this host or one of its interface names')
            return
        if host_addresses and not any(a == ip for a in host_addresses):
            report.warn('bind', 'the receiver binds only %s, but '
                        'rpc_zmq_host resolves here to %s: services on this '
                        'host cannot reach their own receiver' % (
                            ip, ', '.join(host_addresses)),
                        'bind * or the address rpc_zmq_host resolves to')
    if port == 0:
        report.ok('bind', '%s: port 0, the kernel picks a free one' %
                  endpoint)
        return
    problem = _try_bind(family, ip, port)
    if problem is None:
        report.ok('bind', '%s (%s): port %d is free' % (
            endpoint, label, port))
        return
    if problem.errno in (errno.EACCES, errno.EPERM):
        report.warn('bind', 'this user may not bind port %d (%s)' % (
            port, problem.strerror), 'start the receiver as root (it drops '
            'to [zmq_receiver] user after binding) or give it '
            'CAP_NET_BIND_SERVICE')
        return
    if problem.errno != errno.EADDRINUSE:
        report.fail('bind', 'cannot bind %s: %s' % (endpoint,
                                                    problem.strerror),
                    'set rpc_zmq_bind_address and rpc_zmq_port to an '
                    'address and port of this host')
        return
    ipc_dir = os.path.abspath(conf.rpc_zmq_ipc_dir)
    ours = _lock_pid(ipc_dir)
    holders = listener_pids(port)
    answers = _receiver_answers(ipc_dir, timeout)
    if answers and (not holders or ours in holders):
        report.ok('bind', 'port %d is held by the running receiver of %s%s'
                  % (port, ipc_dir, ' (pid %d)' % ours if ours else ''))
        return
    who = ', '.join('pid %d (%s)' % (p, _command_name(p))
                    for p in sorted(holders)) or 'another process'
    report.fail('bind', 'port %d is in use by %s, not by a receiver of %s'
                % (port, who, ipc_dir), 'stop it (ss -ltnp \'sport = :%d\' '
                'names it) or set rpc_zmq_port to a free port' % port)


def _may(st, uid, gids, bits):
    """Whether *uid* with groups *gids* has *bits* (r=4, w=2, x=1) on a
    file with stat *st*."""
    if uid == 0:
        return True
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == uid:
        return mode >> 6 & bits == bits
    if st.st_gid in gids:
        return mode >> 3 & bits == bits
    return mode & bits == bits


def _unreachable(path, uid, gids):
    """The first directory from / to *path* that *uid* may not enter, or
    None."""
    parts = path.strip('/').split('/')
    for i in range(len(parts) + 1):
        current = '/' + '/'.join(parts[:i])
        if not _may(os.stat(current), uid, gids, 1):
            return current
    return None


def _user_label(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return 'uid %d' % uid


def _group_label(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return 'gid %d' % gid


def receiver_identity(conf, path, receiver_user=None):
    """(Identity, why) of the user the receiver will run as, and what
    says so: *receiver_user* (--receiver-user), ``[zmq_receiver] user``, or,
    with neither (a unit's ``User=`` is not in the config), the owner of
    the IPC directory *path* when it exists, else the user running this
    check. Raises ReceiverError for a user or group that does not exist."""
    group = conf[opts.GROUP]
    if receiver_user:
        ident = privileges.resolve(receiver_user, group.group)
        return ident, '--receiver-user'
    if group.user:
        return (privileges.resolve(group.user, group.group),
                '[zmq_receiver] user')
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        ident = privileges.resolve(str(st.st_uid), group.group)
        return ident, ('the owner of %s, as [zmq_receiver] user is unset; '
                       'give --receiver-user if the unit\'s User= says '
                       'otherwise' % path)
    return (privileges.resolve('', group.group),
            'the user running this check, as [zmq_receiver] user is unset '
            'and %s does not exist; give --receiver-user if the unit\'s '
            'User= says otherwise' % path)


def check_ipc_dir(conf, report, service_user, receiver_user=None):
    group = conf[opts.GROUP]
    path = os.path.abspath(conf.rpc_zmq_ipc_dir)
    try:
        ident, why = receiver_identity(conf, path, receiver_user)
        socket_gid = (privileges.group_id(group.socket_group, 'socket_group')
                      if group.socket_group else -1)
    except errors.ReceiverError as exc:
        report.fail('user', str(exc).replace(
            '[zmq_receiver] user', '--receiver-user' if receiver_user else
            '[zmq_receiver] user'))
        return
    report.ok('user', 'the receiver runs as %s (%s)' % (ident.label, why))
    host = opts.rpc_zmq_host(conf)
    longest = 'zmq_replies.' + host
    if len(longest) > routing.max_key_length(path):
        report.fail('ipc-dir', 'the socket %s would be %d bytes, longer than '
                    'a unix socket path may be (%d): replies to this host '
                    'would be refused' % (
                        routing.socket_path(path, longest),
                        len(routing.socket_path(path, longest).encode()),
                        routing.UNIX_PATH_MAX),
                    'set rpc_zmq_ipc_dir to a shorter path')
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        # Started as root to become [zmq_receiver] user, root creates it;
        # started as its user (a unit's User=), that user does.
        creator = (privileges.current() if group.user and not receiver_user
                   else ident)
        if rundir.on_read_only_fs(parent):
            report.fail('ipc-dir', '%s does not exist, and %s is on a '
                        'read-only file system' % (path, parent),
                        'set rpc_zmq_ipc_dir to a path on a writable one')
        elif _may(os.stat(parent), creator.uid, creator.groups(), 3):
            report.ok('ipc-dir', '%s does not exist; the receiver creates it'
                      % path)
        else:
            report.fail('ipc-dir', '%s does not exist, and %s may not create '
                        'it in %s' % (path, creator.label, parent),
                        'install -d -o %s %s, or start the receiver as root'
                        % (ident.label, path))
        return
    except OSError as exc:
        report.fail('ipc-dir', '%s: %s' % (path, exc.strerror))
        return
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        report.fail('ipc-dir', '%s is a symbolic link' % path,
                    'set rpc_zmq_ipc_dir to the real directory, %s'
                    % os.path.realpath(path))
        return
    if not stat.S_ISDIR(st.st_mode):
        report.fail('ipc-dir', '%s is not a directory' % path,
                    'remove it, or set rpc_zmq_ipc_dir to a directory')
        return
    if mode & stat.S_IWOTH and not group.allow_world_writable:
        report.fail('ipc-dir', '%s is world-writable (mode %04o): any local '
                    'user could replace its sockets' % (path, mode),
                    'chmod o-w %s' % path)
        return
    blocked = _unreachable(path, ident.uid, ident.groups())
    if blocked:
        report.fail('ipc-dir', '%s may not enter %s, on the way to %s' % (
            ident.label, blocked, path), 'chmod o+x %s, or give %s its '
            'group' % (blocked, ident.label))
        return
    if not _may(st, ident.uid, ident.groups(), 3):
        report.fail('ipc-dir', '%s (owner %s, group %s, mode %04o) is not '
                    'writable by %s, who runs the receiver' % (
                        path, _user_label(st.st_uid),
                        _group_label(st.st_gid), mode, ident.label),
                    'chown %s %s' % (ident.label, path))
        return
    if rundir.on_read_only_fs(path):
        report.fail('ipc-dir', '%s is on a read-only file system' % path,
                    'set rpc_zmq_ipc_dir to a path on a writable one')
        return
    report.ok('ipc-dir', '%s: %s may create its sockets (owner %s, mode '
              '%04o)' % (path, ident.label, _user_label(st.st_uid), mode))
    if service_user:
        _check_service_user(report, path, st, ident, socket_gid,
                            opts.socket_mode(conf), service_user)


def _check_service_user(report, path, st, ident, socket_gid, socket_mode,
                        name):
    try:
        service = privileges.resolve(name)
    except errors.ReceiverError as exc:
        report.fail('service', str(exc).replace('[zmq_receiver] user',
                                                '--service-user'))
        return
    gids = service.groups()
    blocked = _unreachable(path, service.uid, gids)
    if blocked:
        report.fail('service', '%s may not enter %s' % (service.label,
                                                        blocked),
                    'chmod o+x %s, or give %s its group' % (
                        blocked, service.label))
        return
    if socket_gid != -1:
        sock_gid = socket_gid
    elif st.st_mode & stat.S_ISGID:
        sock_gid = st.st_gid
    else:
        sock_gid = ident.gid
    sock_st = os.stat_result((stat.S_IFSOCK | socket_mode, 0, 0, 0,
                              ident.uid, sock_gid, 0, 0, 0, 0))
    if not _may(sock_st, service.uid, gids, 2):
        report.fail('service', '%s may not connect: the sockets will be '
                    'owned by %s, group %s, mode %04o' % (
                        service.label, ident.label, _group_label(sock_gid),
                        socket_mode),
                    'add %s to group %s (usermod -a -G %s %s), or set '
                    '[zmq_receiver] socket_group to a group of %s' % (
                        service.label, _group_label(sock_gid),
                        _group_label(sock_gid), service.label,
                        service.label))
        return
    report.ok('service', '%s may connect to the sockets (group %s, mode '
              '%04o)' % (service.label, _group_label(sock_gid), socket_mode))


def check_matchmaker(conf, report, timeout):
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


def check_redis(conf, report, timeout):
    ttl, freq = conf.matchmaker_heartbeat_ttl, conf.matchmaker_heartbeat_freq
    if ttl <= 0 or freq <= 0:
        report.fail('heartbeat', 'matchmaker_heartbeat_freq = %d and '
                    'matchmaker_heartbeat_ttl = %d must be positive' % (
                        freq, ttl), 'use the defaults, 300 and 600')
        return
    if freq >= ttl:
        report.fail('heartbeat', 'matchmaker_heartbeat_freq (%d s) is not '
                    'below matchmaker_heartbeat_ttl (%d s): live services '
                    'expire between two refreshes' % (freq, ttl),
                    'make the TTL at least twice the frequency')
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
    check_bind(conf, report, addresses, command.timeout)
    check_ipc_dir(conf, report, command.service_user, command.receiver_user)
    check_matchmaker(conf, report, command.timeout)
    return report.summary()
