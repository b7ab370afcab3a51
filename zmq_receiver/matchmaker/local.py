"""The ``local`` matchmaker: every topic is served on one host.

The legacy ``MatchMakerLocalhost``, the driver's default: a bare topic goes
to ``topic.<host>``, a fanout to ``fanout~topic.<host>``, where *host* is
this host's ``rpc_zmq_host``. Good for a single node and for tests.
"""

from zmq_receiver.matchmaker import base


class LocalMatchMaker(base.MatchMaker):
    """Everything on *host*."""

    name = 'local'

    def __init__(self, host):
        self.host = host

    def fanout_queues(self, topic):
        # As the legacy exchange: the topic up to its first dot, then host.
        return [(base.queue_name(topic.split('.', 1)[0], self.host),
                 self.host)]

    def pick_queue(self, topic):
        return [(base.queue_name(topic, self.host), self.host)]

    def hosts(self, topic):
        return [self.host]

    def topics(self):
        return {}

    def describe(self):
        return 'local (every topic on %s)' % self.host
