"""The ``ring`` matchmaker: a static JSON file of topics and their hosts.

The file (``[matchmaker_ring] ringfile``) is a JSON object from bare topic to
the list of hosts serving it (PROTOCOL.md section 6)::

    {"scheduler": ["host1", "host2"], "conductor": ["host1", "host2"]}

A bare topic goes to ``topic.host`` for one host at a time, round-robin; a
``fanout~topic`` goes to ``fanout~topic.host`` for every listed host.

The old deployment guide's example used single quotes and a trailing comma,
which JSON does not allow, and operators copy it: those two mistakes get a
hint of their own. Every error names the file, line and column.
"""

import json
import logging
import os
import tempfile

from zmq_receiver.matchmaker import base

LOG = logging.getLogger(__name__)

EXAMPLE = '{"scheduler": ["host1", "host2"], "conductor": ["host1", "host2"]}'

# Characters that cannot stand in a topic or host name: they would end up
# in a topic frame, and from there in a socket file name.
# Control characters too: a name is printed to the operator's terminal
# (ring show, ring diff), where an escape sequence would be obeyed.
_FORBIDDEN = frozenset(' /\\~\x7f') | frozenset(map(chr, range(32)))


class RingFileError(base.MatchMakerError):
    """The ring file is missing, unreadable or wrong.

    :attr:`line` and :attr:`column` (1-based) locate the mistake when it has
    a place in the file; :attr:`hints` are the fixes for mistakes copied
    from the old deployment guide.
    """

    def __init__(self, path, reason, line=None, column=None, hints=()):
        self.path = path
        self.reason = reason
        self.line = line
        self.column = column
        self.hints = list(hints)
        where = path
        if line is not None:
            where = '%s, line %d, column %d' % (path, line, column)
        message = 'Ring file %s: %s' % (where, reason)
        for hint in self.hints:
            message += '. Hint: ' + hint
        super().__init__(message)


class Ring:
    """A parsed ring: :attr:`topics` ({topic: [host]}) and the
    :attr:`warnings` about things that work but are probably mistakes."""

    def __init__(self, topics, warnings=()):
        self.topics = topics
        self.warnings = list(warnings)

    def hosts(self):
        """Every host named in the ring, sorted."""
        return sorted({h for hosts in self.topics.values() for h in hosts})


def _position(text, index):
    """1-based (line, column) of *index* in *text*."""
    line = text.count('\n', 0, index) + 1
    column = index - (text.rfind('\n', 0, index) + 1) + 1
    return line, column


def _guide_mistakes(text):
    """Index of the first single quote and of the first trailing comma
    outside JSON strings, each None when absent."""
    single = trailing = None
    last_comma = None
    for i, char in _outside_strings(text):
        if char == ',':
            last_comma = i
            continue
        if char in '}]' and last_comma is not None and trailing is None:
            trailing = last_comma
        if char == "'" and single is None:
            single = i
        # Only blanks may stand between a trailing comma and its bracket.
        if not char.isspace():
            last_comma = None
    return single, trailing


def _outside_strings(text):
    """(index, character) of each character of *text* outside JSON
    strings; a string's opening quote is outside, its closing one in."""
    in_string = escaped = False
    for i, char in enumerate(text):
        if not in_string:
            in_string = char == '"'
            yield i, char
        elif escaped:
            escaped = False
        elif char == '\\':
            escaped = True
        elif char == '"':
            in_string = False


def _hints(text):
    single, trailing = _guide_mistakes(text)
    hints = []
    if single is not None:
        hints.append(
            'single quotes at line %d, column %d: JSON needs double quotes '
            'around every topic and host name (the old deployment guide\'s '
            'example uses single quotes, which is not JSON), for example '
            '%s' % (_position(text, single) + (EXAMPLE,)))
    if trailing is not None:
        hints.append(
            'a trailing comma at line %d, column %d: JSON allows no comma '
            'after the last item of a list or object (the old deployment '
            'guide\'s example has one): remove it'
            % _position(text, trailing))
    return hints


def _key_position(text, key):
    """(line, column) where *key* first appears quoted in *text*, or
    (None, None)."""
    index = text.find(json.dumps(key))
    if index < 0:
        return None, None
    return _position(text, index)


def check_name(name):
    """Why *name* cannot be a topic or host name, or None."""
    if not isinstance(name, str):
        return 'is %s, not a string' % json.dumps(name)
    if not name:
        return 'is empty'
    bad = sorted(set(name) & _FORBIDDEN)
    if bad:
        return 'contains %s' % ', '.join(repr(c) for c in bad)
    if not name.isascii():
        return 'is not ASCII'
    if '..' in name:
        return 'contains ".."'
    return None


def parse(text, path='<ring>'):
    """Parse ring file *text* (from *path*) into a :class:`Ring`.

    Raises :class:`RingFileError` when it cannot be used.
    """
    data, duplicates = _decode(text, path)
    warnings = [_duplicate_warning(text, key) for key in duplicates]
    topics = {}
    for topic, hosts in data.items():
        why = _topic_error(topic, hosts)
        if why:
            line, column = _key_position(text, topic)
            raise RingFileError(path, why, line, column)
        warnings.extend(warning % topic for test, warning in _TOPIC_WARNINGS
                        if test(topic, hosts))
        topics[topic] = list(hosts)
    warnings.extend(_fqdn_warnings(topics))
    return Ring(topics, warnings)


def _decode(text, path):
    """The JSON object of *text*, and the keys it holds twice (in any
    object of it)."""
    duplicates = []

    def pairs(items):
        seen = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise RingFileError(path, 'not valid JSON: %s' % exc.msg,
                            exc.lineno, exc.colno, _hints(text))
    if not isinstance(data, dict):
        raise RingFileError(
            path, 'the file holds a JSON %s, not an object of topics to '
            'host lists such as %s' % (type(data).__name__, EXAMPLE), 1, 1)
    return data, duplicates


def _duplicate_warning(text, key):
    line, column = _key_position(text, key)
    return 'topic %r is listed twice; the last list wins%s' % (
        key, '' if line is None else ' (line %d)' % line)


def _topic_error(topic, hosts):
    """Why *topic* and its *hosts* cannot be used, or None."""
    why = check_name(topic)
    if why:
        return 'topic %r %s' % (topic, why)
    if isinstance(hosts, str):
        return ('the hosts of topic %r must be a list, not a string: '
                'write "%s": [%s]' % (topic, topic, json.dumps(hosts)))
    if not isinstance(hosts, list):
        return ('the hosts of topic %r must be a list of host names, '
                'not %s' % (topic, json.dumps(hosts)))
    for host in hosts:
        why = check_name(host)
        if why:
            return 'a host of topic %r %s' % (topic, why)
    return None


#: (test of a topic and its hosts, the warning when it holds), in order.
_TOPIC_WARNINGS = (
    (lambda topic, hosts: '.' in topic,
     'topic %r has a dot: senders never look up a directed '
     'topic (topic.host) in the ring; list the bare topic'),
    (lambda topic, hosts: not hosts,
     'topic %r lists no host: senders find nobody to send it to'),
    (lambda topic, hosts: len(set(hosts)) != len(hosts),
     'topic %r lists a host more than once, which '
     'sends it more than its share'),
)


def _fqdn_warnings(topics):
    fqdns = sorted({h for hosts in topics.values() for h in hosts if '.' in h})
    if not fqdns:
        return []
    return [
        'host names with dots (%s): the deployment guide asks for bare '
        'host names; each must equal that host\'s rpc_zmq_host, or its '
        'services never see the messages' % ', '.join(fqdns)]


def load(path):
    """Read and parse the ring file at *path*; a :class:`Ring`."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        raise RingFileError(
            path, 'no such file: create it (a JSON object of topics to host '
            'lists, such as %s) or set [matchmaker_ring] ringfile' % EXAMPLE)
    except IsADirectoryError:
        raise RingFileError(path, 'is a directory, not a file: set '
                                  '[matchmaker_ring] ringfile to the file')
    except OSError as exc:
        raise RingFileError(path, 'cannot be read: %s; make it readable '
                                  'for this user' % exc.strerror)
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as exc:
        line, column = _position(raw.decode('utf-8', 'replace'), exc.start)
        raise RingFileError(path, 'not UTF-8 text', line, column)
    return parse(text, path)


def dumps(topics):
    """*topics* ({topic: [host]}) as ring file text, sorted and stable."""
    return json.dumps({t: list(h) for t, h in sorted(topics.items())},
                      indent=2, sort_keys=True) + '\n'


def write(path, topics):
    """Write *topics* as a ring file at *path*, atomically."""
    write_text(path, dumps(topics))


def write_text(path, text):
    """Write *text* at *path* atomically, keeping the mode of the file it
    replaces (0644 for a new one)."""
    directory = os.path.dirname(os.path.abspath(path))
    # A new file of a name no one can guess (O_EXCL | O_NOFOLLOW), moded
    # by its descriptor: the admin tool may run as root in a directory
    # another user can write.
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path),
                               suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'w') as f:
            try:
                # The permission bits only: never a set-id bit.
                mode = os.stat(path).st_mode & 0o777
            except FileNotFoundError:
                mode = 0o644
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # Readers (senders, a reload) see the old file or the new one.
        os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


class RingMatchMaker(base.MatchMaker):
    """Lookups in the ring file at *path* (or in the dict *topics*)."""

    name = 'ring'

    def __init__(self, path, topics=None):
        self.path = path
        self._next = {}
        if topics is None:
            self.ring = load(path)
        else:
            self.ring = Ring({t: list(h) for t, h in topics.items()})

    def reload(self):
        """Re-read the file; on error keep the ring in use and raise."""
        ring = load(self.path)
        changed = ring.topics != self.ring.topics
        self.ring = ring
        return changed

    def hosts(self, topic):
        return list(self.ring.topics.get(topic, ()))

    def topics(self):
        return {t: list(h) for t, h in self.ring.topics.items()}

    def fanout_queues(self, topic):
        bare = topic[len(base.FANOUT_PREFIX):]
        return [(base.queue_name(topic, host), host)
                for host in self.ring.topics.get(bare, ())]

    def pick_queue(self, topic):
        hosts = self.ring.topics.get(topic)
        if not hosts:
            return []
        # Per topic, per process, like the legacy itertools.cycle; the
        # position survives a reload that changes the list.
        index = self._next.get(topic, 0) % len(hosts)
        self._next[topic] = index + 1
        host = hosts[index]
        return [(base.queue_name(topic, host), host)]

    def ping(self):
        load(self.path)
        return self.describe()

    def describe(self):
        return 'ring (%s: %d topics, %d hosts)' % (
            self.path, len(self.ring.topics), len(self.ring.hosts()))
