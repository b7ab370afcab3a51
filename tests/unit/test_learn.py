"""What ``ring learn`` and ``ring diff`` conclude from /topics documents
(the receivers themselves: tests/functional/test_ring_data.py)."""

import pytest

from zmq_receiver import admin_learn
from zmq_receiver import diff_page
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
    topics, notes = admin_learn.implied(docs)
    assert topics == {'compute': ['node1', 'node2'], 'scheduler': ['node1']}
    assert len(notes) == 1 and 'compute.node9' in notes[0]


def test_compare_states():
    listed = {'compute': ['node1', 'node3', 'node4'], 'cert': ['node5']}
    seen = {'compute': ['node1', 'node2']}
    cells = admin_learn.compare(listed, seen, {'node1', 'node2', 'node3'},
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
    target = admin_learn.parse_target(text, 9101)
    assert (target.label, target.url) == wanted


@pytest.mark.parametrize('text,message', [
    ('node1', 'No port for node1'),
    ('node1:http', 'the port must be a number'),
    ('n1=', 'names no host'),
])
def test_parse_target_errors(text, message):
    with pytest.raises(errors.ConfigError) as info:
        admin_learn.parse_target(text, None)
    assert message in str(info.value)


def test_page_escapes_names():
    page = diff_page.render({('<b>', 'h&1'): 'unlisted'},
                            {'"x"': 'refused <here>'}, 'ring<1>.json')
    assert '<th>&lt;b&gt;</th>' in page
    assert '<b>&quot;x&quot;</b>' in page
    assert 'h&amp;1' in page and 'refused &lt;here&gt;' in page
    assert 'ring&lt;1&gt;.json' in page
