"""The matchmaker interface: which hosts serve a topic.

A matchmaker answers the legacy driver's question "where do I send a message
for this topic?" with a list of ``(queue, host)`` pairs: the topic to put in
frame 1 and the host whose receiver (``tcp://host:rpc_zmq_port``) gets it.
The rules of the legacy driver, in its order (PROTOCOL.md section 6):

1. ``fanout~topic``: every host serving ``topic``;
2. a directed topic ``topic.host``: that host, with no lookup;
3. a bare topic: one host serving it, a different one each time.

Subclasses supply the data (:meth:`MatchMaker.hosts`) and the two lookups
that use it. Registration (:meth:`MatchMaker.register` and its kin) does
something only where the matchmaker holds registrations
(:attr:`MatchMaker.dynamic`); elsewhere it does nothing, as in the legacy
driver, so that a caller may call it whatever the matchmaker.

Nothing here runs in the background: a caller that keeps registrations
alive calls :meth:`MatchMaker.ack_alive` every ``matchmaker_heartbeat_freq``
seconds itself. The calls of a matchmaker that talks to a server block (with
the server's timeouts); call them outside a loop that must not block.
"""

import os

from zmq_receiver import errors

FANOUT_PREFIX = 'fanout~'


class MatchMakerError(errors.ConfigError):
    """The matchmaker's configuration or data is wrong (an operator's fix)."""


class RegistryUnavailable(errors.ReceiverError):
    """The registry server does not answer (possibly transient)."""

    exit_code = os.EX_TEMPFAIL


def split_directed(topic):
    """``(topic, host)`` of a directed topic ``topic.host``, else None."""
    base, dot, host = topic.partition('.')
    if not dot or not base or not host:
        return None
    return base, host


def queue_name(topic, host):
    """The directed topic ``topic.host`` a service on *host* consumes."""
    return '%s.%s' % (topic, host)


class MatchMaker:
    """Base of every matchmaker; see the module's documentation."""

    #: The name ``rpc_zmq_matchmaker`` gives it.
    name = None
    #: Whether it holds registrations that :meth:`register` changes.
    dynamic = False

    def queues(self, topic):
        """The ``[(queue, host)]`` a message for *topic* goes to.

        An empty list means that nobody serves *topic*.
        """
        if topic.startswith(FANOUT_PREFIX):
            return self.fanout_queues(topic)
        if '.' in topic:
            return [(topic, topic.split('.', 1)[1])]
        return self.pick_queue(topic)

    def fanout_queues(self, topic):
        """The queues of ``fanout~topic``: one per host serving topic."""
        raise NotImplementedError

    def pick_queue(self, topic):
        """``[(topic.host, host)]`` for one host serving the bare *topic*."""
        raise NotImplementedError

    def hosts(self, topic):
        """Every host serving *topic*, in the matchmaker's order."""
        raise NotImplementedError

    def topics(self):
        """``{topic: [host, ...]}``: everything the matchmaker knows."""
        raise NotImplementedError

    def served_by(self, host):
        """The bare topics *host* serves, sorted."""
        return sorted(t for t, hosts in self.topics().items() if host in hosts)

    # -- registration: no-ops unless the matchmaker is dynamic ---------------

    def register(self, topic, host, ttl=None):
        """Record that *host* serves *topic*, alive for *ttl* seconds.

        *ttl* None is the configured ``matchmaker_heartbeat_ttl``; 0 keeps
        the record until :meth:`unregister`.
        """

    def unregister(self, topic, host):
        """Remove the record that *host* serves *topic*."""

    def ack_alive(self, topic, host, ttl=None):
        """Keep the record of *host* serving *topic* alive for *ttl* more
        seconds, recreating it when it has expired meanwhile."""

    def registrations(self, topic, host):
        """The ``(topic, host)`` records an RPC server keeps for *topic*.

        A legacy RPC server consumes the bare topic and its directed topic,
        and registers both: ``(topic, host)`` and ``(topic.host, host)``.
        """
        pairs = [(topic, host)]
        if '.' not in topic:
            pairs.append((queue_name(topic, host), host))
        return pairs

    def register_server(self, topic, host, ttl=None):
        """Register *host* as an RPC server of *topic*, as a service does."""
        for key, key_host in self.registrations(topic, host):
            self.register(key, key_host, ttl)

    def unregister_server(self, topic, host):
        """Undo :meth:`register_server`."""
        for key, key_host in reversed(self.registrations(topic, host)):
            self.unregister(key, key_host)

    def refresh_server(self, topic, host, ttl=None):
        """Heartbeat of :meth:`register_server`'s records."""
        for key, key_host in self.registrations(topic, host):
            self.ack_alive(key, key_host, ttl)

    # -- life ----------------------------------------------------------------

    def reload(self):
        """Re-read the matchmaker's source (SIGHUP). True when it changed."""
        return False

    def ping(self):
        """A line describing the backend; raises when it is unusable."""
        return self.describe()

    def describe(self):
        """A short description for logs: the name and the source."""
        return self.name

    def close(self):
        """Release connections and files."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
