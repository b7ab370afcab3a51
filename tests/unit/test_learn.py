"""What ``ring learn`` and ``ring diff`` conclude from /topics documents
(the receivers themselves: tests/functional/test_ring_data.py)."""

import pytest

from zmq_receiver.admin import diff_page
from zmq_receiver.admin import learn
from zmq_receiver import errors
from zmq_receiver import topics_doc


@pytest.mark.parametrize('key,wanted', [
    ('compute.node1', ('directed', 'compute')),
    ('fanout~compute', ('fanout', 'compute')),
    ('zmq_replies.node1', ('reply', None)),
    ('compute', ('bare', 'compute')),
    ('compute.node2', ('bare', 'compute.node2')),
    ('.node1', ('bare', '.node1')),
])
def test_shape(key, wanted):
    assert topics_doc.shape(key, 'node1') == wanted


def _doc(host, consumers):
    return {'host': host, 'topics': {
        key: {'consumers': n} for key, n in consumers.items()}}


def test_implied_ring_and_notes():
    docs = {'a': _doc('node1', {'compute.node1': 1, 'fanout~scheduler': 2,
                                'zmq_replies.node1': 1,
                                'conductor.node1': 0}),
            'b': _doc('node2', {'compute': 1, 'compute.node9': 1})}
    topics, notes = learn.implied(docs)
    assert topics == {'compute': ['node1', 'node2'], 'scheduler': ['node1']}
    assert len(notes) == 1 and 'compute.node9' in notes[0]


def test_compare_states():
    listed = {'compute': ['node1', 'node3', 'node4'], 'cert': ['node5']}
    seen = {'compute': ['node1', 'node2']}
    cells = learn.compare(listed, seen, {'node1', 'node2', 'node3'},
                                {'node4'})
    assert cells == {('compute', 'node1'): 'ok',
                     ('compute', 'node2'): 'unlisted',
                     ('compute', 'node3'): 'no-consumer',
                     ('compute', 'node4'): 'no-answer',
                     # Never asked, or answered under another name.
                     ('cert', 'node5'): 'no-answer'}


@pytest.mark.parametrize('text,wanted', [
    ('node1', ('node1', 'http://node1:9101/topics')),
    ('node1:9200', ('node1', 'http://node1:9200/topics')),
    ('node1=10.0.0.1:9200', ('node1', 'http://10.0.0.1:9200/topics')),
    ('10.0.0.1', ('10.0.0.1', 'http://10.0.0.1:9101/topics')),
    ('n6=[2001:db8::1]:9200', ('n6', 'http://[2001:db8::1]:9200/topics')),
    ('[2001:db8::1]', ('2001:db8::1', 'http://[2001:db8::1]:9101/topics')),
])
def test_parse_target(text, wanted):
    target = learn.parse_target(text, 9101)
    assert (target.label, target.url) == wanted


@pytest.mark.parametrize('text,message', [
    ('node1', 'No port for node1'),
    ('node1:http', 'the port must be a number'),
    ('n1=', 'names no host'),
])
def test_parse_target_errors(text, message):
    with pytest.raises(errors.ConfigError) as info:
        learn.parse_target(text, None)
    assert message in str(info.value)


def test_page_escapes_names():
    page = diff_page.render({('<b>', 'h&1'): 'unlisted'},
                            {'"x"': 'refused <here>'}, 'ring<1>.json')
    assert '<th>&lt;b&gt;</th>' in page
    assert '<b>&quot;x&quot;</b>' in page
    assert 'h&amp;1' in page and 'refused &lt;here&gt;' in page
    assert 'ring&lt;1&gt;.json' in page


class _Hostile:
    """A real HTTP server answering every GET with *body* (and *code*)."""

    def __init__(self, body, code=200):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(code)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever)
        self.thread.start()
        self.target = learn.Target(
            None, '127.0.0.1', self.server.server_address[1])

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(30)


def _answer(host='node1', topics=None):
    import json
    return json.dumps({'format': topics_doc.FORMAT, 'host': host,
                       'topics': topics or {'compute': {'consumers': 1}}
                       }).encode()


@pytest.mark.parametrize('body,code,message', [
    # A RecursionError used to end learn and diff with a traceback.
    (b'[' * 200000, 200, 'nested too deeply'),
    (_answer(host='node\x1b]0;owned\x07'), 200, 'contains'),
    (_answer(topics={'compute\x1b[2J': {'consumers': 1}}), 200,
     'control character'),
    (b'no\x1b[2J', 403, 'HTTP 403'),
])
def test_a_hostile_answer_is_a_host_that_did_not_answer(body, code, message):
    server = _Hostile(body, code)
    try:
        with pytest.raises(errors.ReceiverError) as info:
            learn.fetch(server.target, 30)
    finally:
        server.close()
    assert message in str(info.value)
    assert '\x1b' not in str(info.value)


@pytest.mark.parametrize('text,claims,refused', [
    # Asked by its name, a receiver must answer as that name: otherwise
    # the learnt ring lists whatever host it claims for its topics.
    ('node1=127.0.0.1', 'attacker.example', True),
    ('node1=127.0.0.1', 'node1', False),
    ('localhost', 'attacker.example', True),
    ('localhost', 'localhost', False),
    # Asked by its address only, it names itself (a note says so).
    ('127.0.0.1', 'node7', False),
])
def test_a_host_asked_by_name_must_answer_as_that_name(text, claims, refused):
    server = _Hostile(_answer(host=claims))
    try:
        target = learn.parse_target(
            '%s:%d' % (text, server.target.port), None)
        if refused:
            with pytest.raises(errors.ReceiverError) as info:
                learn.fetch(target, 30)
            assert 'answered as rpc_zmq_host %s, not as' % claims in str(
                info.value)
        else:
            assert learn.fetch(target, 30)['host'] == claims
    finally:
        server.close()


def test_a_host_that_trickles_its_answer_is_given_up_at_its_timeout():
    # The socket timeout bounds each read only: one byte every half
    # second used to hold learn and diff for as long as the host liked.
    import socket
    import threading
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(4)
    done = threading.Event()
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: 60\r\n\r\n')
            for _ in range(60):
                if stop.wait(0.5):
                    return
                conn.sendall(b' ')
        done.set()

    thread = threading.Thread(target=trickle)
    thread.start()
    slow = learn.Target('slow', '127.0.0.1',
                              listener.getsockname()[1])
    good = _Hostile(_answer(host='node1'))
    try:
        docs, failed = learn.collect(
            [slow, learn.Target('node1', '127.0.0.1',
                                      good.target.port)], 1)
        assert not done.is_set(), 'waited for the whole trickle'
    finally:
        stop.set()
        thread.join(30)
        listener.close()
        good.close()
    assert set(docs) == {'node1'}
    assert 'timed out' in failed['slow']
