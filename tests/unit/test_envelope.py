"""envelope.decode and format_text: what the admin tool reads off the wire.

Pure functions over frames a hostile peer chooses, so they are fuzzed with
hypothesis: any list of frames decodes without raising and formats as
text, and the messages the legacy driver really sends (casts, call
requests, impl_zmq_v2 notifications, oslo.messaging's serialized envelope)
decode to what they say. The strategies are built so that the search
reaches every branch of the module. Measured with coverage.py (in the
``test`` extra), the fuzz tests alone::

    .venv/bin/python -m coverage run --branch \
        --include='zmq_receiver/admin/envelope.py,zmq_receiver/routing.py' \
        -m pytest tests/unit/test_envelope.py tests/unit/test_routing.py \
        -k 'total or legacy or never_raises or longer_limit'
    .venv/bin/python -m coverage report -m

give 100% of envelope.py's lines and branches, and of routing.route's
(routing.endpoint, a one-line helper, is not fuzzed).
"""

import json

import hypothesis
import pytest
from hypothesis import strategies as st

from zmq_receiver.admin import envelope

#: JSON values small enough to keep examples fast.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) |
    st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
TEXT = st.text(max_size=12)


def wrap(message, wrapped):
    """*message*, or oslo.messaging's serialized envelope around it."""
    if not wrapped:
        return message
    return {'oslo.version': '2.0', 'oslo.message': json.dumps(message)}


@st.composite
def messages(draw):
    """A message body: a plain dict, a call request (-reply) whose inner
    call may be wrapped, or any JSON value; sometimes wrapped itself."""
    choice = draw(st.sampled_from(['plain', 'call', 'call-odd', 'json']))
    if choice == 'plain':
        message = {'method': draw(TEXT), 'args': draw(JSON)}
    elif choice == 'call':
        inner = {'method': draw(TEXT), 'args': draw(JSON)}
        message = {'method': '-reply', 'args': {
            'topic': draw(TEXT), 'msg_id': draw(TEXT),
            'msg': [draw(JSON), wrap(inner, draw(st.booleans()))]}}
    elif choice == 'call-odd':
        # -reply whose args do not carry a call, or an inner one that is
        # not a dict.
        message = {'method': '-reply', 'args': draw(st.one_of(
            JSON, st.fixed_dictionaries({'msg': st.lists(JSON, max_size=3)}),
            st.fixed_dictionaries({'msg': st.tuples(JSON, JSON).map(list)})))}
    else:
        message = draw(JSON)
    if draw(st.booleans()):
        # An envelope whose message is not JSON, or not a str at all.
        message = {'oslo.message': draw(st.one_of(TEXT, JSON))}
    return wrap(message, draw(st.booleans()))


def text(value):
    return json.dumps(value).encode()


@st.composite
def casts(draw):
    """frames[3] as the legacy driver writes it ([ctx-as-JSON-text, msg]),
    or as a sloppier peer might (ctx as an object, the wrong length)."""
    context = draw(JSON)
    if draw(st.booleans()):
        context = json.dumps(context)
    body = [context, draw(messages())]
    if draw(st.booleans()):
        body = draw(st.sampled_from([body, body[:1], body + [1], {}]))
    frames = [draw(st.binary(max_size=8)), draw(st.binary(max_size=12)),
              envelope.CAST, text(body)]
    return frames + draw(st.lists(st.binary(max_size=4), max_size=1))


@st.composite
def v2(draw):
    """impl_zmq_v2: id, topic, marker, context, then key/value pairs."""
    pairs = draw(st.lists(st.tuples(
        st.sampled_from([b'oslo.message', b'oslo.version', b'other']),
        st.one_of(messages().map(text), st.binary(max_size=8))),
        max_size=3))
    frames = [b'id', b'topic', envelope.V2, text(draw(JSON))]
    for key, value in pairs:
        frames += [key, value]
    if draw(st.booleans()):
        frames.append(b'odd')
    return frames


FRAMES = st.one_of(
    casts(), v2(),
    st.lists(st.binary(max_size=16), max_size=6),
    st.lists(st.sampled_from([envelope.CAST, envelope.V2, b'', b'{}',
                              b'\xff', b'["{}", {}]']), max_size=6),
)

KEYS = {'topic', 'msg_id', 'layout', 'context', 'method', 'args', 'message'}


# 3,000 examples: over a minute on a busy machine, beyond the 30 s a test
# has by default; out of ./dev check.
@pytest.mark.slow
@pytest.mark.timeout(300)
@hypothesis.settings(max_examples=3000, deadline=None)
@hypothesis.given(frames=FRAMES)
def test_decode_is_total_and_consistent(frames):
    decoded = envelope.decode(frames)
    assert KEYS <= set(decoded)
    assert decoded['layout'] in ('cast', 'impl_zmq_v2', 'unknown')
    if decoded['layout'] == 'unknown':
        # Kept as text, frame for frame.
        assert len(decoded['frames']) == len(frames)
    else:
        assert len(frames) >= 4
        assert frames[2] == {'cast': envelope.CAST,
                             'impl_zmq_v2': envelope.V2}[decoded['layout']]
    if 'call' in decoded:
        assert set(decoded['call']) == {'msg_id', 'reply_topic'}
    # JSON-safe (for --json) and printable, whatever came in.
    json.dumps(decoded)
    assert envelope.format_text(decoded).startswith('--- ')


@hypothesis.given(topic=st.sampled_from(['compute.host1', b'compute.host1']),
                  method=TEXT, args=JSON, context=JSON,
                  msg_id=st.binary(max_size=8), version=st.none() | TEXT)
def test_a_legacy_cast_decodes_to_what_it_says(topic, method, args, context,
                                               msg_id, version):
    hypothesis.assume(isinstance(context, dict))
    frames = envelope.cast_frames(topic, method, args, context, msg_id,
                                  version)
    decoded = envelope.decode(frames)
    assert decoded['layout'] == 'cast'
    assert decoded['topic'] == 'compute.host1'
    # cast_frames sends no args as {}.
    assert (decoded['method'], decoded['args'], decoded['context']) == (
        method, {} if args is None else args, context)
    assert decoded['message'].get('version') == version


def test_a_call_request_names_its_reply_and_the_call():
    inner = {'method': 'ping', 'args': {'x': 1}}
    call = {'method': '-reply', 'args': {
        'topic': 'zmq_replies.h1', 'msg_id': 'abc',
        'msg': ['{}', wrap(inner, True)]}}
    frames = [b'0', b'compute.h2', envelope.CAST, text(['{}', call])]
    decoded = envelope.decode(frames)
    assert decoded['call'] == {'msg_id': 'abc',
                               'reply_topic': 'zmq_replies.h1'}
    assert (decoded['method'], decoded['args']) == ('ping', {'x': 1})
    assert 'call:    reply to zmq_replies.h1, msg_id abc' in \
        envelope.format_text(decoded)


def test_a_v2_notification_decodes_its_pairs():
    message = {'method': 'notify', 'args': {'event': 'x'}}
    frames = [b'0', b'notifications.info', envelope.V2, b'{"user": "u"}',
              b'oslo.message', text(message), b'oslo.version', b'2.0']
    decoded = envelope.decode(frames)
    assert decoded['layout'] == 'impl_zmq_v2'
    assert decoded['version'] == '2.0'
    assert decoded['context'] == {'user': 'u'}
    assert (decoded['method'], decoded['args']) == ('notify', {'event': 'x'})
