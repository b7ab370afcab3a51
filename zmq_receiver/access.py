"""Who may send to the receiver: an allow-list of networks, and CURVE.

On the legacy port, ``allowed_networks`` is enforced without ZAP, because
libzmq rejects every ZMTP 1.0 and 2.0 peer of a socket that has a ZAP
domain (they have no security handshake to ask ZAP about), and distro
stacks of Grizzly to Icehouse send with libzmq 2.x and 3.x. There a kernel
socket filter keeps a refused peer's bytes out of libzmq
(:mod:`zmq_receiver.peerfilter`), and :class:`NetworkCheck` refuses the
connection once it is accepted (:mod:`zmq_receiver.connections`).

On the CURVE port, both are enforced by libzmq through ZAP (ZeroMQ RFC 27):
during the handshake of every new connection, libzmq asks the handler bound
at ``inproc://zeromq.zap.01`` in the socket's context, and the peer may
send nothing before the answer is 200. The handler is pyzmq's
:class:`zmq.auth.Authenticator`, with two changes:

* the address check takes networks (``192.0.2.0/24``, ``2001:db8::/32``),
  where pyzmq's ``allow()`` takes exact addresses only;
* it runs in the receiver's own loop: its socket is registered with the
  loop's poller and each request is answered at once, so that there is no
  second thread and nothing blocks.

CURVE has its own socket and port, because a CURVE server socket refuses
every NULL sender (see README, "Access control").

Nothing happens at import; :func:`policy_from` reads and checks the
options, :class:`AccessControl` does the work.
"""

import functools
import ipaddress
import logging
import os
import stat

import zmq
import zmq.auth
from zmq.utils import z85

from zmq_receiver import errors
from zmq_receiver import opts

LOG = logging.getLogger(__name__)

#: ZAP domain of the CURVE socket; libzmq passes it with each request, and
#: the CURVE keys are looked up under it.
CURVE_DOMAIN = 'zmq_receiver_curve'

# Reasons a connection is denied. Counter labels: stable.
NETWORK_NOT_ALLOWED = 'network_not_allowed'
CURVE_KEY_UNKNOWN = 'curve_key_unknown'
OTHER = 'other'

#: Peer addresses whose verdict a NetworkCheck keeps (the latest ones).
VERDICTS_KEPT = 4096

#: pyzmq's status texts for a refusal, to our reasons.
_REASONS = {
    b'Address not allowed': NETWORK_NOT_ALLOWED,
    b'Unknown key': CURVE_KEY_UNKNOWN,
}


def parse_networks(values, option='allowed_networks'):
    """The networks in *values* (strings) as a tuple of ip_network.

    A bare address is a network of one. Raises :class:`errors.ConfigError`
    naming the option, the value and the fix.
    """
    networks = []
    for value in values:
        text = value.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            try:
                # 10.0.0.5/8: host bits set; say which network was meant
                # rather than guess it silently.
                guess = ipaddress.ip_network(text, strict=False)
            except ValueError:
                hint = ('write an address (192.0.2.7, 2001:db8::7) or a '
                        'network in CIDR form (192.0.2.0/24, 2001:db8::/32)')
            else:
                hint = 'write %s for the network it is in' % guess
            raise errors.ConfigError(
                '[%s] %s: %r is not a network (%s); %s' % (
                    opts.GROUP, option, value, exc, hint))
    return tuple(networks)


def peer_address(text):
    """*text*, a peer address as libzmq reports it, as an ip_address.

    An IPv4 peer of a dual-stack (IPv6) socket is reported as an
    IPv4-mapped IPv6 address (``::ffff:192.0.2.7``): it is taken as the
    IPv4 address, so that IPv4 networks match it. None when *text* is not
    an address.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def allowed(text, networks):
    """Whether the peer address *text* is in one of *networks*."""
    address = peer_address(text)
    # An IPv4 address is in no IPv6 network and the reverse: no error.
    return address is not None and any(address in n for n in networks)


def refused_network(counters, warn, peer):
    """Count and log (rate-limited, through *warn*) a connection from
    *peer* refused by allowed_networks."""
    counters.denied[NETWORK_NOT_ALLOWED] += 1
    warn.warning(
        'denied-' + NETWORK_NOT_ALLOWED,
        'Refused a connection from %s: its address is in none of '
        '[%s] allowed_networks; if it is a legitimate sender, add '
        'its network there and restart', peer, opts.GROUP)


class NetworkCheck:
    """allowed_networks on the legacy port, asked about each connection
    as it is accepted (see :meth:`connections.Connections.watch`)."""

    def __init__(self, networks, counters, warn):
        self.networks = tuple(networks)
        self.counters = counters
        self.warn = warn
        # A legacy sender connects once a message, from one address:
        # parsing it each time was a fifth of what a connection costs the
        # loop. Bounded, since a refused network may come from any number
        # of addresses.
        self._verdict = functools.lru_cache(maxsize=VERDICTS_KEPT)(
            self._judge)

    def admits(self, peer):
        """Whether the peer at address *peer* (text) may stay connected;
        a refusal is counted and logged."""
        ok, shown = self._verdict(peer)
        if ok:
            return True
        refused_network(self.counters, self.warn, shown)
        return False

    def _judge(self, peer):
        """(whether *peer* is allowed, the address to log if not)."""
        address = peer_address(peer)
        # 192.0.2.7 rather than ::ffff:192.0.2.7 (a dual-stack socket's).
        return (address is not None and
                any(address in n for n in self.networks)), address or peer


class Curve:
    """The checked CURVE settings: the port, the server's keys and where
    the client keys are (None: any client key)."""

    def __init__(self, port, public_key, secret_key, clients_dir):
        self.port = port
        self.public_key = public_key
        self.secret_key = secret_key
        self.clients_dir = clients_dir


class Policy:
    """Who may connect: *networks* (empty: anyone) and *curve* (or None)."""

    def __init__(self, networks=(), curve=None):
        self.networks = tuple(networks)
        self.curve = curve


def load_client_keys(directory):
    """The z85 public keys of the ``*.key`` certificates in *directory*.

    Raises :class:`errors.ConfigError` naming the directory, or the file,
    and the fix.
    """
    option = '[%s] curve_allowed_clients_dir' % opts.GROUP
    if not os.path.isdir(directory):
        raise errors.ConfigError(
            '%s: %s is not a directory; create it and put the senders\' '
            'public certificates (*.key) in it' % (option, directory))
    try:
        return zmq.auth.load_certificates(directory)
    except (OSError, ValueError) as exc:
        raise errors.ConfigError(
            '%s: cannot read the client certificates in %s (%s); every '
            '*.key file there must be a readable public certificate made '
            'by zmq.auth.create_certificates' % (option, directory, exc))


def load_server_keys(path):
    """(public, secret) z85 keys of the server certificate at *path*."""
    option = '[%s] curve_secret_key_file' % opts.GROUP
    try:
        st = os.stat(path)
        public, secret = zmq.auth.load_certificate(path)
    except PermissionError as exc:
        raise errors.PermissionProblem(
            '%s: cannot read %s (%s); start the receiver as a user that '
            'may read it (it is read before privileges are dropped)' % (
                option, path, exc.strerror))
    except OSError:
        raise errors.ConfigError(
            '%s: %s does not exist; generate the receiver\'s certificate '
            '(see README, "Access control") and give the path of its '
            '.key_secret file' % (option, path))
    except ValueError as exc:
        raise errors.ConfigError('%s: %s is not a certificate (%s)' % (
            option, path, exc))
    if not secret:
        raise errors.ConfigError(
            '%s: %s holds no secret key: it is a public certificate; give '
            'the .key_secret file made with it' % (option, path))
    if stat.S_IMODE(st.st_mode) & 0o077:
        LOG.warning('%s: %s may be read by other users (mode %04o): '
                    'whoever reads it can impersonate the receiver; '
                    'chmod 600 it', option, path, stat.S_IMODE(st.st_mode))
    return public, secret


def policy_from(conf):
    """The :class:`Policy` of *conf*, or None when access is not limited.

    Reads the key files, so call it before privileges are dropped. Raises
    :class:`errors.ConfigError` (or PermissionProblem) on any mistake.
    """
    group = conf[opts.GROUP]
    networks = parse_networks(group.allowed_networks)
    curve = None
    if group.curve_port is None:
        for name in ('curve_secret_key_file', 'curve_allowed_clients_dir'):
            if getattr(group, name):
                raise errors.ConfigError(
                    '[%s] %s is set but curve_port is not, so nothing '
                    'would use it; set curve_port to the port CURVE '
                    'senders use, or remove %s' % (opts.GROUP, name, name))
    else:
        if not zmq.has('curve'):
            raise errors.ConfigError(
                '[%s] curve_port is set, but this libzmq (%s) was built '
                'without CURVE; install a pyzmq whose libzmq has it, or '
                'remove curve_port' % (opts.GROUP, zmq.zmq_version()))
        if not group.curve_secret_key_file:
            raise errors.ConfigError(
                '[%s] curve_port is set but curve_secret_key_file is not; '
                'generate the receiver\'s certificate (see README, "Access '
                'control") and set curve_secret_key_file to its .key_secret '
                'file' % opts.GROUP)
        public, secret = load_server_keys(group.curve_secret_key_file)
        clients_dir = group.curve_allowed_clients_dir
        if clients_dir:
            clients_dir = os.path.abspath(clients_dir)
            # Now, to fail the start on a mistake rather than every sender.
            load_client_keys(clients_dir)
        else:
            LOG.warning('[%s] curve_allowed_clients_dir is not set: any '
                        'sender that knows the receiver\'s public key may '
                        'send on curve_port (encrypted, but not '
                        'authenticated); set it to a directory of the '
                        'senders\' public certificates', opts.GROUP)
        curve = Curve(group.curve_port, public, secret, clients_dir)
    if not networks and curve is None:
        return None
    return Policy(networks, curve)


class AccessControl(zmq.auth.Authenticator):
    """A ZAP handler answering in the receiver's loop.

    :meth:`start` binds the ZAP socket in *context*: call it before any
    inbound socket binds, so that no connection is ever accepted unasked.
    Then register :attr:`zap_socket` for POLLIN with :meth:`on_zap` as its
    handler. Refusals are counted in ``counters.denied`` by reason and
    logged through *warn* (a :class:`ratelimit.RateLimitedLog`).
    """

    def __init__(self, context, policy, counters, warn):
        super().__init__(context, log=LOG)
        self.policy = policy
        self.counters = counters
        self.warn = warn
        #: The ZAP request being answered, for the refusal's log line.
        self._request = None

    def start(self):
        """Bind the ZAP socket and load the CURVE client keys; without a
        CURVE port nothing asks ZAP, and :attr:`zap_socket` stays None."""
        curve = self.policy.curve
        if curve is None:
            return
        super().start()
        # A handshake waiting on an answer must not hold up the exit.
        self.zap_socket.linger = 0
        if curve.clients_dir:
            self.certs[CURVE_DOMAIN] = load_client_keys(curve.clients_dir)
        else:
            self.configure_curve(CURVE_DOMAIN, zmq.auth.CURVE_ALLOW_ANY)

    def describe(self):
        """One line for the startup log."""
        parts = []
        if self.policy.networks:
            parts.append('connections only from allowed_networks %s' %
                         ', '.join(str(n) for n in self.policy.networks))
        curve = self.policy.curve
        if curve is not None:
            if curve.clients_dir:
                parts.append('CURVE senders with one of the %d client keys '
                             'in %s' % (len(self.certs[CURVE_DOMAIN]),
                                        curve.clients_dir))
            else:
                parts.append('CURVE senders with any client key (set '
                             'curve_allowed_clients_dir to authenticate '
                             'them)')
        return '; '.join(parts)

    def secure_curve(self, sock):
        """Make *sock* a CURVE server with the receiver's keys."""
        curve = self.policy.curve
        sock.curve_server = True
        sock.curve_secretkey = curve.secret_key
        sock.curve_publickey = curve.public_key
        self._require_zap(sock, CURVE_DOMAIN)

    @staticmethod
    def _require_zap(sock, domain):
        sock.zap_domain = domain.encode()
        # Without it, libzmq accepts a connection unchecked when it finds
        # no ZAP handler (as while the receiver closes): fail closed.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def reload(self):
        """Re-read the CURVE client keys (SIGHUP); keep the old ones when
        the directory cannot be read."""
        curve = self.policy.curve
        if curve is None or not curve.clients_dir:
            return
        try:
            keys = load_client_keys(curve.clients_dir)
        except errors.ReceiverError as exc:
            LOG.error('Keeping the %d CURVE client keys loaded before: %s',
                      len(self.certs.get(CURVE_DOMAIN, ())), exc)
            return
        self.certs[CURVE_DOMAIN] = keys
        LOG.info('Loaded %d CURVE client keys from %s', len(keys),
                 curve.clients_dir)

    def on_zap(self, events):
        """Answer every pending ZAP request (a poller handler)."""
        sock = self.zap_socket
        while True:
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.answer(request)

    def answer(self, request):
        """Answer one ZAP request: the networks first, then pyzmq's
        checks of the mechanism (CURVE keys; NULL passes)."""
        self._request = request
        try:
            if (self.policy.networks and len(request) >= 6
                    and not allowed(request[3].decode('ascii', 'replace'),
                                    self.policy.networks)):
                self._send_zap_reply(request[1], b'400',
                                     b'Address not allowed')
                return
            # A coroutine only so that a credentials provider may be
            # async; none is configured, so it ends at its first step.
            step = self.handle_zap_message(request)
            try:
                step.send(None)
            except StopIteration:
                return
            step.close()
            raise RuntimeError('the ZAP handler waited on something')
        finally:
            self._request = None

    def _send_zap_reply(self, request_id, status_code, status_text,
                        user_id='anonymous'):
        # Every answer passes here, whichever check refused: count and log
        # the refusals in one place.
        if status_code != b'200':
            self._refused(status_text)
        super()._send_zap_reply(request_id, status_code, status_text,
                                user_id)

    def _refused(self, status_text):
        reason = _REASONS.get(status_text, OTHER)
        request = self._request or []
        peer = (request[3].decode('ascii', 'replace')
                if len(request) > 3 else 'an unknown peer')
        if reason == NETWORK_NOT_ALLOWED:
            refused_network(self.counters, self.warn, peer)
            return
        self.counters.denied[reason] += 1
        if reason == CURVE_KEY_UNKNOWN:
            key = (z85.encode(request[6]).decode('ascii')
                   if len(request) > 6 and len(request[6]) == 32 else '?')
            self.warn.warning(
                'denied-' + reason,
                'Refused a CURVE connection from %s: its client key %s is '
                'not in [%s] curve_allowed_clients_dir (%s); if it is a '
                'legitimate sender, copy its public certificate (.key) '
                'there and send SIGHUP', peer, key, opts.GROUP,
                self.policy.curve.clients_dir)
        else:
            self.warn.warning(
                'denied-' + reason,
                'Refused a connection from %s: %s', peer,
                status_text.decode('ascii', 'replace'))
