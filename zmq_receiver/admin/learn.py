"""``ring learn`` and ``ring diff``: the matchmaker data the cloud reports.

Every receiver serves ``/topics`` (:mod:`zmq_receiver.topics_doc`): the
topics with consumers on its host right now. ``learn`` asks a list of
hosts for it, in parallel with a timeout per host, and writes the ring
that reality implies: each topic lists the hosts where a service consumes
it (``topic.host``, ``fanout~topic`` or the bare ``topic``). ``diff``
compares that with the ring file (or, with ``--redis``, with the Redis
registrations) per topic and host, and exits 1 when they disagree:

``no-consumer``
    listed, but that host's receiver sees no consumer (its service is down,
    or listens elsewhere);
``unlisted``
    a consumer on a host the ring does not list (no sender reaches it);
``no-answer``
    the host's receiver did not answer (down, unreachable, ``/topics`` not
    allowed for this address).

The hosts: those given as ``[NAME=]HOST[:PORT]``, those of ``--inventory``,
and (for ``learn``, with ``--from-ring``; for ``diff``, always) those of the
ring or Redis; PORT defaults to ``--port`` or ``[zmq_receiver]
metrics_port``. A receiver reports under its ``rpc_zmq_host``, which is the
name the ring must use.
"""

import ipaddress
import json
import queue
import sys
import threading
import time
import urllib.error
import urllib.request

from zmq_receiver.admin import diff_page
from zmq_receiver import errors
from zmq_receiver.admin import inventory as inventory_mod
from zmq_receiver import matchmaker
from zmq_receiver import opts
from zmq_receiver import topics_doc
from zmq_receiver.matchmaker import ring

ACTIONS = ('learn', 'diff')
#: Hosts asked at once.
MAX_PARALLEL = 32
#: An operator waits for the answer: a short retry, not the agent's.
REDIS_RETRIES = 2

OK = 'ok'
NO_CONSUMER = 'no-consumer'
UNLISTED = 'unlisted'
NO_ANSWER = 'no-answer'
DISAGREE = (NO_CONSUMER, UNLISTED, NO_ANSWER)


def _add_targets(parser):
    parser.add_argument('hosts', nargs='*', metavar='[NAME=]HOST[:PORT]',
                        help='receivers to ask (NAME: the name the ring '
                             'uses for it, when HOST is an address)')
    parser.add_argument('--inventory', metavar='FILE',
                        help='ask every host of this inventory')
    parser.add_argument('--port', type=int,
                        help='the receivers\' metrics port (default: '
                             '[zmq_receiver] metrics_port)')
    parser.add_argument('--timeout', type=float, default=3.0,
                        help='seconds each host may take (default 3)')


def add_parser(actions):
    learn = actions.add_parser(
        'learn', help='write the ring the running receivers imply')
    _add_targets(learn)
    learn.add_argument('--from-ring', metavar='FILE',
                       help='ask every host of this ring file')
    learn.add_argument('--output', '-o', metavar='FILE',
                       help='write FILE (atomically) instead of printing')
    learn.add_argument('--allow-empty', action='store_true',
                       help='write even when no receiver reports a consumer')
    learn.add_argument('--partial', action='store_true',
                       help='write the ring of the receivers that answered '
                            'even when some did not (their hosts are then '
                            'missing from it)')
    diff = actions.add_parser(
        'diff', help='compare a ring (or Redis) with what the receivers see; '
                     'exit 1 when they disagree')
    _add_targets(diff)
    diff.add_argument('--ring', metavar='FILE',
                      help='the ring file (default: [matchmaker_ring] '
                           'ringfile)')
    diff.add_argument('--redis', action='store_true',
                      help='compare with the Redis registrations '
                           '([matchmaker_redis]) instead of a ring file')
    diff.add_argument('--json', action='store_true',
                      help='machine-readable output')
    diff.add_argument('--html', metavar='FILE',
                      help='also write the topic x host matrix as a page')


class Target:
    """A receiver to ask: :attr:`name` (as the ring knows it, or None) and
    :attr:`url` of its ``/topics``."""

    def __init__(self, name, host, port):
        self.name = name
        self.host = host
        self.port = port
        literal = '[%s]' % host if ':' in host else host
        self.url = 'http://%s:%d/topics' % (literal, port)

    @property
    def label(self):
        return self.name or self.host

    @property
    def expected_host(self):
        """The rpc_zmq_host its document must give: the name it was asked
        by (NAME=, or HOST when that is a name), or None for an address."""
        if self.name:
            return self.name
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return self.host
        return None


def parse_target(text, default_port):
    """A :class:`Target` from ``[NAME=]HOST[:PORT]``."""
    name, sep, rest = text.partition('=')
    if not sep:
        name, rest = None, text
    host, port = rest, default_port
    if rest.startswith('['):
        host, _, tail = rest[1:].partition(']')
        if tail.startswith(':'):
            port = tail[1:]
    elif rest.count(':') == 1:
        host, port = rest.split(':')
    if not host:
        raise errors.ConfigError('%r names no host: write [NAME=]HOST[:PORT]'
                                 % text)
    if port is None:
        raise errors.ConfigError(
            'No port for %s: write HOST:PORT, give --port, or set '
            '[zmq_receiver] metrics_port' % text)
    try:
        port = int(port)
    except ValueError:
        raise errors.ConfigError('%r: the port must be a number' % text)
    return Target(name or None, host, port)


def targets(conf, command, listed_hosts=()):
    """Every :class:`Target` the command names, each host once."""
    port = command.port
    if port is None:
        port = conf[opts.GROUP].metrics_port
    found = [parse_target(t, port) for t in command.hosts]
    names = list(listed_hosts)
    if command.inventory:
        names.extend(sorted(inventory_mod.load(command.inventory).hosts))
    known = {t.label for t in found}
    for name in names:
        if name not in known:
            found.append(parse_target(name, port))
            known.add(name)
    if not found:
        raise errors.ConfigError(
            'No receiver to ask: name hosts ([NAME=]HOST[:PORT]), an '
            '--inventory, or a ring')
    return found


def _printable(text):
    """*text* from a peer, with what a terminal would obey replaced."""
    return ''.join(c if c.isprintable() else '?' for c in text)


def fetch(target, timeout):
    """The ``/topics`` document of *target*, or raise with the reason."""
    doc = _parse(target, _download(target, timeout))
    _check_form(target, doc)
    _check_names(target, doc)
    _check_answers_as_asked(target, doc)
    return doc


def _download(target, timeout):
    """The body of *target*'s answer, at most ``topics_doc.MAX_BYTES``."""
    try:
        with urllib.request.urlopen(target.url, timeout=timeout) as answer:
            body = answer.read(topics_doc.MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise errors.ReceiverError('HTTP %d from %s: %s' % (
            exc.code, target.url, _printable(
                exc.read(300).decode('utf-8', 'replace').strip())))
    except urllib.error.URLError as exc:
        raise errors.ReceiverError('%s: %s' % (target.url, exc.reason))
    except OSError as exc:
        raise errors.ReceiverError('%s: %s' % (target.url, exc))
    if len(body) > topics_doc.MAX_BYTES:
        raise errors.ReceiverError('%s: document larger than %d bytes' % (
            target.url, topics_doc.MAX_BYTES))
    return body


def _parse(target, body):
    """*body* decoded as JSON."""
    try:
        return json.loads(body)
    except ValueError:
        raise errors.ReceiverError('%s did not answer JSON: is it a receiver '
                                   'metrics port?' % target.url)
    except RecursionError:
        # Nested deeper than the decoder's recursion limit: a hostile or
        # broken answer, which must not end the whole learn or diff.
        raise errors.ReceiverError('%s answered JSON nested too deeply to '
                                   'be a /topics document' % target.url)


def _is_topics_doc(doc):
    """Whether *doc* has the shape of a ``/topics`` document."""
    return (isinstance(doc, dict) and doc.get('format') == topics_doc.FORMAT
            and isinstance(doc.get('host'), str)
            and isinstance(doc.get('topics'), dict)
            and all(isinstance(e, dict) and
                    isinstance(e.get('consumers'), int)
                    for e in doc['topics'].values()))


def _check_form(target, doc):
    if not _is_topics_doc(doc):
        raise errors.ReceiverError('%s answered a document of another form '
                                   '(not a /topics of format %d)' % (
                                       target.url, topics_doc.FORMAT))


def _check_names(target, doc):
    # The names go into a ring and onto the operator's terminal: a host
    # name a ring may hold, and outlet keys without a control character
    # (an escape sequence the terminal would obey).
    why = ring.check_name(doc['host'])
    if why is not None:
        raise errors.ReceiverError('%s answered a host name that %s: %s' % (
            target.url, why, ascii(doc['host'])))
    for key in doc['topics']:
        if not key.isprintable():
            raise errors.ReceiverError(
                '%s answered a topic with a control character: %s' % (
                    target.url, ascii(key)))


def _check_answers_as_asked(target, doc):
    # The ring lists the host a document names, and senders then send that
    # topic's casts there: a host asked by its name must answer as that
    # name, or one receiver could list any host (an attacker's) for any
    # topic. Only one asked by its address names itself.
    expected = target.expected_host
    if expected is not None and doc['host'] != expected:
        raise errors.ReceiverError(
            '%s answered as rpc_zmq_host %s, not as %s: the ring would list '
            'a host other than the one asked; set rpc_zmq_host = %s on that '
            'receiver, or name it %s=%s' % (
                target.url, doc['host'], expected, expected, doc['host'],
                target.host))


def collect(found, timeout):
    """({target label: document}, {target label: reason}), at most
    MAX_PARALLEL asked at once, each for at most *timeout* seconds.

    The socket timeout of a request bounds each read, not the answer: a
    host that sends a byte every few seconds would hold the command for
    as long as it likes. So each host gets a deadline of its own here, and
    one that misses it is given up (its thread, a daemon, is left to end
    with the process).
    """
    docs, failed = {}, {}
    answers = queue.Queue()

    def ask(target):
        try:
            answers.put((target, fetch(target, timeout), None))
        except errors.ReceiverError as exc:
            answers.put((target, None, str(exc)))

    waiting = list(found)
    running = {}  # target -> its deadline
    while waiting or running:
        while waiting and len(running) < MAX_PARALLEL:
            target = waiting.pop(0)
            running[target] = time.monotonic() + timeout
            threading.Thread(target=ask, args=(target,), daemon=True).start()
        try:
            target, doc, reason = answers.get(
                timeout=max(0, min(running.values()) - time.monotonic()))
        except queue.Empty:
            now = time.monotonic()
            for target, deadline in list(running.items()):
                if deadline <= now:
                    del running[target]
                    failed[target.label] = (
                        '%s: timed out: no complete answer within %g s' % (
                            target.url, timeout))
            continue
        if running.pop(target, None) is None:
            continue  # given up already
        if reason is None:
            docs[target.label] = doc
        else:
            failed[target.label] = reason
    return docs, failed


def implied(docs):
    """({topic: [host]}, notes): the ring the documents imply.

    A host serves a topic when its receiver sees a consumer on
    ``topic.host``, ``fanout~topic`` or ``topic``. Replies are not looked
    up in a ring; a consumer of a directed topic of another host name is
    a note (a service whose ``host`` is not this receiver's
    ``rpc_zmq_host``).
    """
    topics, notes = {}, []
    for doc in docs.values():
        host = doc['host']
        for key, entry in sorted(doc['topics'].items()):
            if not entry.get('consumers'):
                continue
            kind, bare = topics_doc.shape(key, host)
            if kind == 'reply':
                continue
            if kind == 'bare' and '.' in key:
                notes.append('%s has a consumer of %s, a directed topic of '
                             'another host name: is that service\'s host '
                             'option %s?' % (host, key, host))
                continue
            topics.setdefault(bare, set()).add(host)
    return {t: sorted(h) for t, h in sorted(topics.items())}, notes


def compare(listed, seen, answered, unanswered):
    """{(topic, host): state} for every listed or seen pair.

    *listed* and *seen* are {topic: [host]}; *answered* the hosts whose
    receivers answered; *unanswered* those that did not.
    """
    cells = {}
    for topic in set(listed) | set(seen):
        hosts_listed = set(listed.get(topic, ()))
        hosts_seen = set(seen.get(topic, ()))
        for host in hosts_listed | hosts_seen:
            if host in hosts_seen:
                state = OK if host in hosts_listed else UNLISTED
            elif host in unanswered or host not in answered:
                state = NO_ANSWER
            else:
                state = NO_CONSUMER
            cells[(topic, host)] = state
    return cells


def _documents(conf, command, listed_hosts):
    found = targets(conf, command, listed_hosts)
    docs, failed = collect(found, command.timeout)
    notes = []
    for label, doc in sorted(docs.items()):
        if label != doc['host']:
            notes.append('%s answered as rpc_zmq_host %s; the ring must name '
                         'it %s' % (label, doc['host'], doc['host']))
    return docs, failed, notes


def _refuse_incomplete(command, docs, failed, topics):
    """Raise unless the learned ring may be written: every receiver
    answered (or --partial), and it holds a topic (or --allow-empty)."""
    if failed and not command.partial:
        raise errors.ReceiverError(
            '%d of %d receivers did not answer (%s): the ring would miss '
            'their hosts; bring them back, or --partial writes it anyway' % (
                len(failed), len(failed) + len(docs),
                ', '.join(sorted(failed))))
    if not topics and not command.allow_empty:
        raise errors.ReceiverError(
            'No receiver reported a consumer: nothing to write '
            '(--allow-empty writes an empty ring anyway)')


def learn(conf, command, out, err):
    """``ring learn``: write the ring the receivers' documents imply."""
    listed = ring.load(command.from_ring).hosts() if command.from_ring else ()
    docs, failed, notes = _documents(conf, command, listed)
    topics, more = implied(docs)
    for note in notes + more:
        print('note: %s' % note, file=err)
    for label, reason in sorted(failed.items()):
        print('warning: %s did not answer: %s' % (label, reason), file=err)
    _refuse_incomplete(command, docs, failed, topics)
    # What is written must load again.
    ring.parse(ring.dumps(topics), '<learned>')
    if not command.output:
        out.write(ring.dumps(topics))
        return 0
    ring.write(command.output, topics)
    print('wrote %s: %d topics, %d hosts; %d of %d receivers answered' % (
        command.output, len(topics),
        len({h for hs in topics.values() for h in hs}), len(docs),
        len(docs) + len(failed)), file=err)
    return 0


def _listed(conf, command):
    """({topic: [host]}, where) of the ring file or Redis."""
    if command.redis:
        with matchmaker.redis_from_conf(conf, retries=REDIS_RETRIES) as mm:
            return ({t: sorted(h) for t, h in mm.topics().items()},
                    mm.where)
    path = command.ring or conf[opts.RING_GROUP].ringfile
    return ring.load(path).topics, path


def report(cells, failed, names):
    """The text of a diff: one line per topic and host, then the hosts
    that did not answer and a summary."""
    width = max([len(t) for t, _ in cells] + [5])
    hwidth = max([len(h) for _, h in cells] + [4])
    lines = ['%-*s  %-*s  %-8s  %s' % (width, 'TOPIC', hwidth, 'HOST',
                                       'RING', 'RECEIVER')]
    texts = {OK: ('listed', 'consumer'),
             NO_CONSUMER: ('listed', 'NO CONSUMER'),
             UNLISTED: ('-', 'CONSUMER, NOT LISTED'),
             NO_ANSWER: ('listed', 'NO ANSWER')}
    for (topic, host), state in sorted(cells.items()):
        ring_text, seen_text = texts[state]
        lines.append('%-*s  %-*s  %-8s  %s' % (width, topic, hwidth, host,
                                               ring_text, seen_text))
    for label, reason in sorted(failed.items()):
        lines.append('host %s did not answer: %s' % (label, reason))
    lines.append(_summary(cells, failed, names))
    return '\n'.join(lines) + '\n'


def _summary(cells, failed, names):
    """The last line of a diff: AGREE, or DISAGREE with the counts."""
    counts = {s: sum(1 for v in cells.values() if v == s) for s in DISAGREE}
    if any(counts.values()) or failed:
        return ('DISAGREE (%s): %d listed without a consumer, %d '
                'consumers not listed, %d hosts did not answer' % (
                    names, counts[NO_CONSUMER], counts[UNLISTED],
                    len(failed)))
    return 'AGREE (%s): %d topics on %d hosts' % (
        names, len({t for t, _ in cells}), len({h for _, h in cells}))


def _json_report(cells, failed, where):
    """The text of ``diff --json``."""
    return json.dumps({
        'listed_in': where,
        'cells': [dict(topic=t, host=h, state=s)
                  for (t, h), s in sorted(cells.items())],
        'no_answer': failed}, indent=2, sort_keys=True) + '\n'


def diff(conf, command, out, err):
    """``ring diff``: the ring (or Redis) against what the receivers
    report; 1 when they disagree."""
    listed, where = _listed(conf, command)
    listed_hosts = sorted({h for hs in listed.values() for h in hs})
    docs, failed, notes = _documents(conf, command, listed_hosts)
    seen, more = implied(docs)
    for note in notes + more:
        print('note: %s' % note, file=err)
    answered = {doc['host'] for doc in docs.values()} | set(docs)
    cells = compare(listed, seen, answered, set(failed))
    if command.json:
        out.write(_json_report(cells, failed, where))
    else:
        out.write(report(cells, failed, where))
    if command.html:
        diff_page.write(command.html, cells, failed, where)
        print('wrote %s' % command.html, file=err)
    disagree = failed or any(s in DISAGREE for s in cells.values())
    return 1 if disagree else 0


def run(conf, command, out=sys.stdout, err=sys.stderr):
    """The ``ring learn`` and ``ring diff`` subcommands; the exit status."""
    if command.action == 'learn':
        return learn(conf, command, out, err)
    return diff(conf, command, out, err)

