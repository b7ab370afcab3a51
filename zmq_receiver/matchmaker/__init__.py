"""Matchmakers: which hosts serve a topic (PROTOCOL.md section 6).

Three, behind the interface of :class:`base.MatchMaker`:

``local``
    every topic on this host (:mod:`.local`);
``ring``
    a static JSON file of topics and hosts (:mod:`.ring`);
``redis``
    registrations with a liveness TTL in Redis, optionally behind Redis
    Sentinel (:mod:`.redis`).

``rpc_zmq_matchmaker`` names one, as a name (``local``, ``ring``,
``redis``; oslo.messaging 1.8.2 and later) or as the class path of the
legacy driver, which still works with a deprecation warning
(:func:`resolve_name`). :func:`from_conf` makes the one a config selects.

The receiver's agent, which keeps this host's records in a matchmaker, is
:mod:`.agent`; it is imported by the receiver's startup, never here.
"""

import logging

from zmq_receiver import opts
from zmq_receiver.matchmaker import base
from zmq_receiver.matchmaker import local
from zmq_receiver.matchmaker import ring

LOG = logging.getLogger(__name__)

MatchMakerError = base.MatchMakerError
RegistryUnavailable = base.RegistryUnavailable
RingFileError = ring.RingFileError

NAMES = ('local', 'ring', 'redis')

# The legacy class of each matchmaker, and the module each lived in; the
# module path before it varies (oslo.messaging._drivers,
# oslo_messaging._drivers, <project>.openstack.common.rpc).
_CLASSES = {
    'MatchMakerLocalhost': 'local',
    'MatchMakerRing': 'ring',
    'MatchMakerRedis': 'redis',
}
_MODULES = {
    'matchmaker': None,
    'matchmaker_ring': 'ring',
    'matchmaker_redis': 'redis',
}


def resolve_name(value):
    """``(name, deprecation)`` for an ``rpc_zmq_matchmaker`` value.

    *name* is one of :data:`NAMES`; *deprecation* is None for a name, or the
    warning to give for a legacy class path. Raises
    :class:`MatchMakerError` for anything else.
    """
    text = (value or '').strip()
    if text.lower() in NAMES:
        return text.lower(), None
    module, _, cls = text.rpartition('.')
    module_name = module.rpartition('.')[2]
    if cls == 'MatchMakerStub':
        raise MatchMakerError(
            'rpc_zmq_matchmaker = %s: the stub matchmaker is for brokered '
            'transports and cannot route ZeroMQ messages; use local, ring or '
            'redis' % text)
    if cls in _CLASSES and module_name in _MODULES:
        name = _CLASSES[cls]
        warning = ('rpc_zmq_matchmaker = %s is a class path of the legacy '
                   'driver, which is deprecated: write rpc_zmq_matchmaker = '
                   '%s' % (text, name))
        implied = _MODULES[module_name]
        if implied is not None and implied != name:
            # The old deployment guide's matchmaker_ring.MatchMakerRedis.
            warning += ('. The class decides: %s in module %s (the old '
                        'deployment guide\'s typo) means %s' % (
                            cls, module_name, name))
        return name, warning
    raise MatchMakerError(
        'rpc_zmq_matchmaker = %s: no such matchmaker; use local, ring or '
        'redis (legacy class paths such as '
        'oslo.messaging._drivers.matchmaker_ring.MatchMakerRing work too)'
        % (text or '""'))


def redis_from_conf(conf, **kwargs):
    """A :class:`.redis.RedisMatchMaker` from ``[matchmaker_redis]``.

    *kwargs* override the constructor's arguments (``retries``, ...).
    """
    # redis-py costs a tenth of a second to import: only when used.
    from zmq_receiver.matchmaker import redis as redis_mm
    group = conf[opts.REDIS_GROUP]
    if group.socket_timeout <= 0:
        raise MatchMakerError(
            '[matchmaker_redis] socket_timeout = %d: it is in milliseconds '
            'and must be positive; the default is 10000'
            % group.socket_timeout)
    settings = dict(
        host=group.host,
        port=group.port,
        password=group.password,
        sentinel_hosts=redis_mm.parse_sentinel_hosts(group.sentinel_hosts),
        sentinel_group=group.sentinel_group_name,
        # Milliseconds in the option, as in oslo.messaging.
        socket_timeout=group.socket_timeout / 1000.0,
        heartbeat_ttl=conf.matchmaker_heartbeat_ttl,
        heartbeat_freq=conf.matchmaker_heartbeat_freq)
    settings.update(kwargs)
    return redis_mm.RedisMatchMaker(**settings)


def ring_from_conf(conf, path=None):
    """A :class:`ring.RingMatchMaker` of *path* or ``[matchmaker_ring]
    ringfile``."""
    return ring.RingMatchMaker(path or conf[opts.RING_GROUP].ringfile)


def from_conf(conf, name=None, **kwargs):
    """The matchmaker *conf* selects (or the one called *name*).

    A legacy class path is logged as deprecated. Raises
    :class:`MatchMakerError` when it cannot be made (a bad name, a broken
    ring file); Redis is not contacted until first used.
    """
    if name is None:
        name, deprecation = resolve_name(conf.rpc_zmq_matchmaker)
        if deprecation:
            LOG.warning('%s', deprecation)
    if name == 'local':
        return local.LocalMatchMaker(opts.rpc_zmq_host(conf))
    if name == 'ring':
        return ring_from_conf(conf)
    if name == 'redis':
        return redis_from_conf(conf, **kwargs)
    raise MatchMakerError('no matchmaker called %r; use one of %s' % (
        name, ', '.join(NAMES)))
