"""Every option the receiver reads, declared in one place.

Nothing is registered at import: :func:`register_opts` does it on the
:class:`~oslo_config.cfg.ConfigOpts` it is given, and :func:`list_opts` feeds
``oslo-config-generator`` (namespace ``zmq_receiver``).

The legacy options live in ``[DEFAULT]`` under the names the oslo.messaging
ZeroMQ driver gave them, so the receiver reads an unmodified service config
file (``nova.conf``, ``neutron.conf``) exactly as the service does.
"""

import socket

from oslo_config import cfg

GROUP = 'zmq_receiver'
RING_GROUP = 'matchmaker_ring'
REDIS_GROUP = 'matchmaker_redis'

#: Replaces the legacy unbounded default of ``rpc_zmq_topic_backlog``.
DEFAULT_TOPIC_BACKLOG = 1000

legacy_opts = [
    cfg.StrOpt(
        'rpc_zmq_bind_address',
        default='*',
        help='Address the receiver binds its TCP port on.\n\n'
             'Possible values:\n\n'
             '* ``*`` for every address of the host\n'
             '* an IPv4 literal (``192.0.2.10``) or an IPv6 literal '
             '(``2001:db8::10``, with or without brackets)\n'
             '* an interface name (``eth0``)\n\n'
             'Related options:\n\n'
             '* ``rpc_zmq_port``'),
    cfg.PortOpt(
        'rpc_zmq_port',
        default=9501,
        help='TCP port the receiver binds. Every host of one project must '
             'use the same port, because senders use their own value for '
             'every destination.\n\n'
             'Related options:\n\n'
             '* ``rpc_zmq_bind_address``'),
    cfg.StrOpt(
        'rpc_zmq_ipc_dir',
        default='/var/run/openstack',
        help='Directory holding the per-topic IPC sockets '
             '(``zmq_topic_<topic>``) that local services connect to. '
             'A relative path is taken from the working directory.\n\n'
             'Related options:\n\n'
             '* ``[zmq_receiver] socket_mode``, ``socket_group``'),
    cfg.StrOpt(
        'rpc_zmq_host',
        default=None,
        sample_default='localhost',
        help='Name of this host as the other hosts know it: the ``host`` '
             'part of directed topics and of ``zmq_replies.<host>``. '
             'Defaults to the host name.'),
    cfg.IntOpt(
        'rpc_zmq_contexts',
        default=1,
        min=1,
        max=64,
        help='Number of libzmq I/O threads of the receiver\'s context.'),
    cfg.IntOpt(
        'rpc_zmq_topic_backlog',
        default=DEFAULT_TOPIC_BACKLOG,
        min=1,
        mutable=True,
        help='Messages each topic holds for its consumers when they are '
             'absent or slower than the senders. When a topic\'s backlog '
             'is full, the newest message is dropped and counted. The '
             'legacy driver left this unbounded; the receiver bounds it.\n\n'
             'Related options:\n\n'
             '* ``[zmq_receiver] max_backlog_bytes``'),
]

# The legacy driver's matchmaker options, under its names and groups, with
# types no stricter than its own: a service's config file must load here.
matchmaker_opts = [
    cfg.StrOpt(
        'rpc_zmq_matchmaker',
        default='local',
        help='Matchmaker that tells senders which hosts serve a topic, as '
             'the services\' legacy driver reads it; the admin tool '
             '(``oslo-messaging-zmq-admin``) reads and maintains the same '
             'one.\n\n'
             'Possible values:\n\n'
             '* ``local``: every topic is served on this host\n'
             '* ``ring``: a static JSON file, ``[matchmaker_ring] '
             'ringfile``\n'
             '* ``redis``: registrations in Redis, ``[matchmaker_redis]``\n'
             '* a legacy class path, such as '
             '``oslo.messaging._drivers.matchmaker_ring.MatchMakerRing``: '
             'deprecated, read as the name of its class\n\n'
             'Related options:\n\n'
             '* ``matchmaker_heartbeat_freq``, ``matchmaker_heartbeat_ttl``'),
    cfg.IntOpt(
        'matchmaker_heartbeat_freq',
        default=300,
        help='Seconds between two refreshes of a Redis registration\'s '
             'TTL. Keep it well below ``matchmaker_heartbeat_ttl``, or '
             'live services drop out of the registry between two '
             'refreshes.\n\n'
             'Related options:\n\n'
             '* ``matchmaker_heartbeat_ttl``'),
    cfg.IntOpt(
        'matchmaker_heartbeat_ttl',
        default=600,
        help='Seconds a Redis registration lives without a refresh. A '
             'service that stops refreshing it is taken out of the '
             'registry by the first lookup after it expired.\n\n'
             'Related options:\n\n'
             '* ``matchmaker_heartbeat_freq``'),
]

ring_opts = [
    cfg.StrOpt(
        'ringfile',
        default='/etc/oslo/matchmaker_ring.json',
        deprecated_name='matchmaker_ringfile',
        deprecated_group='DEFAULT',
        help='Ring file of the ``ring`` matchmaker: a JSON object from each '
             'bare topic to the list of hosts serving it, such as '
             '``{"scheduler": ["host1", "host2"]}``. Double quotes, no '
             'trailing comma. Host names must resolve on every node.\n\n'
             'Related options:\n\n'
             '* ``[DEFAULT] rpc_zmq_matchmaker``'),
]

redis_opts = [
    cfg.StrOpt(
        'host',
        default='127.0.0.1',
        help='Host name or address of the Redis server of the ``redis`` '
             'matchmaker, when no Sentinel is used.\n\n'
             'Related options:\n\n'
             '* ``port``, ``password``, ``sentinel_hosts``'),
    cfg.PortOpt(
        'port',
        default=6379,
        help='TCP port of the Redis server.\n\n'
             'Related options:\n\n'
             '* ``host``'),
    cfg.StrOpt(
        'password',
        default=None,
        secret=True,
        help='Password of the Redis server (its ``requirepass``). Unset or '
             'empty: no password.'),
    cfg.ListOpt(
        'sentinel_hosts',
        default=[],
        help='Redis Sentinels that name the current master, as '
             '``host:port`` items (port 26379 when left out), so that the '
             'registry survives the loss of its master. Unset: the server '
             'at ``host`` and ``port``.\n\n'
             'Related options:\n\n'
             '* ``sentinel_group_name``'),
    cfg.StrOpt(
        'sentinel_group_name',
        default='oslo-messaging-zeromq',
        help='Name of the master the Sentinels monitor (``sentinel monitor '
             '<name> ...``).\n\n'
             'Related options:\n\n'
             '* ``sentinel_hosts``'),
    cfg.IntOpt(
        'socket_timeout',
        default=10000,
        help='Milliseconds (as in oslo.messaging\'s option of this name) a '
             'connection to Redis or a Sentinel, or an answer, may take '
             'before it counts as failed and is retried with exponential '
             'backoff.'),
]

receiver_opts = [
    cfg.IntOpt(
        'max_backlog_bytes',
        default=256 * 1024 * 1024,
        min=0,
        mutable=True,
        help='Bytes all topics\' backlogs may hold together. A message that '
             'would exceed it is dropped and counted. 0 disables the cap.\n\n'
             'Related options:\n\n'
             '* ``[DEFAULT] rpc_zmq_topic_backlog``'),
    cfg.IntOpt(
        'max_topics',
        default=512,
        min=1,
        max=65536,
        help='Number of topic outlets (IPC sockets) that may exist at once. '
             'A message for a new topic beyond it is rejected and counted, '
             'so that no peer can exhaust the host\'s files or '
             'descriptors.\n\n'
             'Related options:\n\n'
             '* ``idle_timeout``'),
    cfg.IntOpt(
        'max_connections',
        default=0,
        min=0,
        help='TCP connections from senders (both ports together) that may '
             'be open at once. A connection beyond it is closed at once and '
             'counted (``denied``, reason too_many_connections), so that '
             'idle connections cannot use up the descriptors the outlets '
             'need. 0: what the descriptor limit leaves besides the '
             'outlets\' share (``max_topics``), and at least half of it; '
             'the receiver raises its soft limit towards the hard one for '
             'that. A larger value than fits the limit is lowered, with a '
             'warning.\n\n'
             'Related options:\n\n'
             '* ``max_topics``'),
    cfg.FloatOpt(
        'idle_timeout',
        default=300.0,
        min=0.1,
        mutable=True,
        help='Seconds after which an outlet with no consumer and no new '
             'message is closed and its socket file removed. Messages it '
             'still holds are dropped and counted (reason no_consumer): '
             'an RPC that waited this long has timed out at its caller, '
             'and a peer must not be able to hold every outlet for ever '
             'with one message each to made-up topics.'),
    cfg.FloatOpt(
        'join_window',
        default=5.0,
        min=0.0,
        mutable=True,
        help='Seconds a fanout or reply message waits for a subscriber '
             'when it arrives before any has subscribed to it; it is '
             'delivered as soon as one joins, or dropped and counted when '
             'the window ends. 0 delivers immediately with plain PUB '
             'semantics (the message is lost when nobody listens).\n\n'
             'It is also how long a new PUSH outlet is joining: its '
             'consumers are still reconnecting (after a restart, say), so '
             'its backlog may hold more than rpc_zmq_topic_backlog, within '
             'max_backlog_bytes and as many messages as all outlets\' '
             'backlogs together; at the end one that no consumer joined '
             'keeps rpc_zmq_topic_backlog. 0: no joining.\n\n'
             'Related options:\n\n'
             '* ``[DEFAULT] rpc_zmq_topic_backlog``\n'
             '* ``max_backlog_bytes``'),
    cfg.IntOpt(
        'max_message_size',
        default=64 * 1024 * 1024,
        min=1,
        help='Largest message accepted, in bytes, counting 64 bytes for '
             'each frame beside its content. A single larger frame '
             'makes libzmq disconnect the peer; a larger multipart message '
             'is rejected and counted.\n\n'
             'Related options:\n\n'
             '* ``max_frames``'),
    cfg.IntOpt(
        'max_frames',
        default=32,
        min=2,
        max=65536,
        help='Most frames a message may have. A message with more is '
             'rejected and counted (reason too_many_frames); its frames '
             'beyond the limit are discarded as they are read, never '
             'kept. Legacy messages have 4 frames and impl_zmq_v2 '
             'notifications 8 (4 plus two per key); the default leaves '
             'room for more keys. Each frame also counts 64 bytes in '
             '``max_message_size`` and the backlog limits, what holding '
             'it costs beside its content.\n\n'
             'Related options:\n\n'
             '* ``max_message_size``, ``max_backlog_bytes``'),
    cfg.StrOpt(
        'socket_mode',
        default='0660',
        regex=r'^0?[0-7]{3}$',
        help='Permission bits of the IPC socket files, in octal. Connecting '
             'needs write permission, so services of the group can connect '
             'when group write is set.\n\n'
             'Possible values:\n\n'
             '* ``0660`` (a directory per project owned by its user, or a '
             'shared setgid group directory)\n'
             '* ``0600`` (only the receiver\'s own user)\n\n'
             'Related options:\n\n'
             '* ``socket_group``'),
    cfg.StrOpt(
        'socket_group',
        default=None,
        help='Group given to the IPC socket files. Unset: the directory\'s '
             'group when the directory is setgid (the shared-group model), '
             'otherwise the receiver\'s own group.'),
    cfg.StrOpt(
        'user',
        default=None,
        help='User (name or uid) the receiver runs as. Started as root, it '
             'binds its port and prepares the IPC directory, then drops '
             'to this user for good. Unset: it keeps the user it was '
             'started as (a loud warning when that is root).\n\n'
             'Related options:\n\n'
             '* ``group``'),
    cfg.StrOpt(
        'group',
        default=None,
        help='Group (name or gid) the receiver runs as. Unset: the '
             'primary group of ``user``.'),
    cfg.StrOpt(
        'ipc_dir_mode',
        default='0755',
        regex=r'^0?[0-7]{3,4}$',
        help='Permission bits, in octal, given to the IPC directory when '
             'the receiver creates it. Use ``2775`` with ``socket_group`` '
             'for the shared-group model.'),
    cfg.BoolOpt(
        'allow_world_writable',
        default=False,
        help='Start even when the IPC directory is world-writable, where '
             'any local user could replace the sockets.'),
    cfg.StrOpt(
        'pid_file',
        default=None,
        help='File the receiver writes its pid to when started with '
             '``--daemon``. Unset: ``<rpc_zmq_ipc_dir>/.zmq-receiver.pid``.'),
    cfg.FloatOpt(
        'shutdown_timeout',
        default=10.0,
        min=0.0,
        help='Seconds a graceful stop (SIGTERM, SIGINT) spends delivering '
             'backlogs before it gives up and counts what is left as '
             'dropped.'),
    cfg.PortOpt(
        'metrics_port',
        default=None,
        help='TCP port of the HTTP endpoint serving Prometheus metrics '
             '(``/metrics``), ``/healthz`` (fails when the forwarding loop '
             'is stuck) and ``/readyz``. Unset: no endpoint. 0: a free '
             'port, logged at startup.\n\n'
             'Related options:\n\n'
             '* ``metrics_address``, ``metrics_top_topics``'),
    cfg.StrOpt(
        'metrics_address',
        default='127.0.0.1',
        help='Address the metrics endpoint binds. The default keeps it on '
             'the loopback interface.'),
    cfg.IntOpt(
        'metrics_top_topics',
        default=20,
        min=1,
        max=1000,
        help='Topics reported by name in the per-topic metrics: the '
             'busiest ones; the others are summed under ``other``, so a '
             'flood of topics cannot flood the metrics.'),
    cfg.ListOpt(
        'topics_allowed_networks',
        default=['127.0.0.0/8', '::1'],
        help='Networks whose hosts may read ``/topics`` on the metrics '
             'endpoint: the JSON document of this host\'s topics and their '
             'consumers that ``oslo-messaging-zmq-admin ring learn`` and '
             '``ring diff`` collect. It tells which service runs where, so '
             'by default only this host may read it: add the network of '
             'the host that runs ``ring learn``. Empty: no ``/topics``.\n\n'
             'Possible values:\n\n'
             '* ``192.0.2.0/24, 2001:db8::/32, 127.0.0.1``\n\n'
             'Related options:\n\n'
             '* ``metrics_port``, ``metrics_address``'),
    cfg.FloatOpt(
        'log_interval',
        default=10.0,
        min=0.1,
        help='Seconds between two warnings of the same kind about bad '
             'input; the ones in between are counted and reported with the '
             'next.'),
    cfg.BoolOpt(
        'matchmaker_agent',
        default=False,
        help='Make the receiver this host\'s matchmaker agent. It binds in '
             'advance the outlets of the topics this host serves (those '
             'the ring file lists it for, or that Redis holds records of '
             'it for, and ``zmq_replies.<rpc_zmq_host>``) and keeps them '
             'open. With ``rpc_zmq_matchmaker = redis`` it registers and '
             'refreshes the records of every topic whose outlet '
             '``<topic>.<rpc_zmq_host>`` has a consumer, and removes them '
             'when the last consumer has been gone for '
             '``agent_grace_period``, so that senders stop routing to a '
             'dead service within ``agent_grace_period`` + 2 seconds; on a '
             'graceful stop it removes them at once. With ``ring``, it '
             'reports the listed topics that have no consumer. ``local`` '
             'has nothing to maintain and is refused.\n\n'
             'Related options:\n\n'
             '* ``agent_grace_period``\n'
             '* ``[DEFAULT] rpc_zmq_matchmaker``, '
             '``matchmaker_heartbeat_freq``, ``matchmaker_heartbeat_ttl``'),
    cfg.FloatOpt(
        'agent_grace_period',
        default=30.0,
        min=0.0,
        mutable=True,
        help='Seconds a topic\'s outlet may have no consumer before the '
             'matchmaker agent removes the topic\'s Redis records (or, '
             'with a ring file, reports it), so that a service that '
             'restarts or reconnects within it keeps its records. Senders '
             'stop routing to a dead service within this + 2 seconds (the '
             'agent looks once a second).\n\n'
             'Related options:\n\n'
             '* ``matchmaker_agent``'),
]

# Who may send (zmq_receiver.access); in [zmq_receiver] beside the others.
access_opts = [
    cfg.ListOpt(
        'allowed_networks',
        default=[],
        help='Networks whose hosts may connect to the receiver\'s TCP '
             'ports, as a comma-separated list of addresses and CIDR '
             'networks, IPv4 or IPv6. A connection from any other address '
             'is refused before it can send, counted (``denied``) and '
             'logged. Works with unmodified legacy senders of every libzmq '
             'version (ZMTP 1.0, 2.0 and 3; on rpc_zmq_port a kernel '
             'socket filter, on curve_port ZAP). Empty: every address may '
             'connect, and no check costs anything.\n\n'
             'Possible values:\n\n'
             '* ``192.0.2.0/24, 2001:db8::/32, 127.0.0.1``\n\n'
             'Related options:\n\n'
             '* ``[DEFAULT] rpc_zmq_bind_address``, ``curve_port``'),
    cfg.PortOpt(
        'curve_port',
        default=None,
        help='A second TCP port, on ``rpc_zmq_bind_address``, for senders '
             'that encrypt and authenticate with ZeroMQ CURVE (such as '
             '``oslo-messaging-zmq-admin send --curve-server-key``). Its '
             'messages are forwarded exactly like those of '
             '``rpc_zmq_port``, which keeps serving the legacy senders, '
             'which cannot speak CURVE. Unset: no CURVE port. 0: a free '
             'port, logged at startup.\n\n'
             'Related options:\n\n'
             '* ``curve_secret_key_file`` (required with it)\n'
             '* ``curve_allowed_clients_dir``\n'
             '* ``allowed_networks`` (applies to this port too)'),
    cfg.StrOpt(
        'curve_secret_key_file',
        default=None,
        help='The receiver\'s CURVE secret certificate, the ``.key_secret`` '
             'file written by ``zmq.auth.create_certificates``. Read at '
             'startup, before privileges are dropped, so it may be '
             'readable by root only. Senders need the matching public '
             'certificate (the ``.key`` file).\n\n'
             'Related options:\n\n'
             '* ``curve_port``'),
    cfg.StrOpt(
        'curve_allowed_clients_dir',
        default=None,
        help='Directory of the public certificates (``*.key`` files) of '
             'the CURVE senders that may connect to ``curve_port``; '
             're-read on SIGHUP, so keys can be added and removed without '
             'a restart. Unset: any sender that completes the CURVE '
             'handshake with the receiver\'s public key is accepted '
             '(encryption without client authentication; a warning is '
             'logged).\n\n'
             'Related options:\n\n'
             '* ``curve_port``, ``curve_secret_key_file``'),
]


cli_opts = [
    cfg.BoolOpt(
        'daemon',
        default=False,
        help='Detach and run in the background (classic init scripts). Not '
             'for systemd or containers, which want the foreground.'),
]


def register_opts(conf):
    """Register the options read from config files on *conf*."""
    conf.register_opts(legacy_opts)
    conf.register_opts(matchmaker_opts)
    conf.register_opts(receiver_opts, group=GROUP)
    conf.register_opts(access_opts, group=GROUP)
    conf.register_opts(ring_opts, group=RING_GROUP)
    conf.register_opts(redis_opts, group=REDIS_GROUP)


def register_cli_opts(conf):
    """Register the receiver's own command-line options on *conf*."""
    conf.register_cli_opts(cli_opts)


def list_opts():
    """Options by group, for ``oslo-config-generator``."""
    return [
        (None, legacy_opts + matchmaker_opts + cli_opts),
        (GROUP, receiver_opts + access_opts),
        (RING_GROUP, ring_opts),
        (REDIS_GROUP, redis_opts),
    ]


def rpc_zmq_host(conf):
    """The configured ``rpc_zmq_host``, or the host name when unset."""
    return conf.rpc_zmq_host or socket.gethostname()


def socket_mode(conf):
    """``[zmq_receiver] socket_mode`` as an integer."""
    return int(conf[GROUP].socket_mode, 8)


def ipc_dir_mode(conf):
    """``[zmq_receiver] ipc_dir_mode`` as an integer."""
    return int(conf[GROUP].ipc_dir_mode, 8)
