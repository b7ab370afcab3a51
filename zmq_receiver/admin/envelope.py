"""The legacy driver's messages, made and read for the admin tool.

The receiver itself never looks past frame 1 (PROTOCOL.md section 2); only
``send`` and ``tap`` do, to test a path end to end and show an operator what
travels on it. Pure functions: no sockets.
"""

import json

CAST = b'cast'
V2 = b'impl_zmq_v2'


def cast_frames(topic, method, args=None, context=None, msg_id=b'0',
                version=None):
    """The four frames of a legacy cast of *method* (*args*) to *topic*.

    Frame 3 is ``[ctx, msg]`` where ctx is JSON text itself, as the legacy
    driver writes it.
    """
    message = {'method': method, 'args': args if args is not None else {}}
    if version is not None:
        message['version'] = version
    body = json.dumps([json.dumps(context or {}), message])
    if isinstance(topic, str):
        topic = topic.encode('ascii')
    return [msg_id, topic, CAST, body.encode()]


def _text(frame):
    return frame.decode('utf-8', 'replace')


def _json(text):
    """*text* decoded as JSON, or kept as it is when it is not JSON."""
    if isinstance(text, bytes):
        text = _text(text)
    try:
        return json.loads(text)
    except ValueError:
        return text


def _unwrap(message):
    """A message, from the serialized envelope oslo.messaging may put it in
    (``{"oslo.version": ..., "oslo.message": "<json>"}``)."""
    if isinstance(message, dict) and isinstance(message.get('oslo.message'),
                                                str):
        return _json(message['oslo.message'])
    return message


def decode(frames):
    """What a message says, as a dict for people and for ``--json``.

    Keys: ``topic``, ``msg_id``, ``layout`` (``cast``, ``impl_zmq_v2`` or
    ``unknown``), ``context``, ``method``, ``args``, ``message`` (the whole
    message). A call request (method ``-reply``) also has ``call``: the
    reply topic and msg_id, with ``method`` and ``args`` taken from the call
    it carries. Anything that cannot be read is kept as text under
    ``frames``.
    """
    result = {
        'topic': _text(frames[1]) if len(frames) > 1 else None,
        'msg_id': _text(frames[0]) if frames else None,
        'layout': 'unknown',
        'context': None,
        'method': None,
        'args': None,
        'message': None,
    }
    layout = frames[2] if len(frames) > 2 else None
    context = message = None
    if layout == CAST and len(frames) == 4:
        body = _json(frames[3])
        if isinstance(body, list) and len(body) == 2:
            result['layout'] = 'cast'
            context, message = body
            if isinstance(context, str):
                context = _json(context)
    elif layout == V2 and len(frames) >= 4 and len(frames) % 2 == 0:
        result['layout'] = 'impl_zmq_v2'
        context = _json(frames[3])
        pairs = dict(zip((_text(f) for f in frames[4::2]),
                         (_text(f) for f in frames[5::2])))
        message = _json(pairs.get('oslo.message', 'null'))
        result['version'] = pairs.get('oslo.version')
    if result['layout'] == 'unknown':
        result['frames'] = [_text(f) for f in frames]
        return result
    message = _unwrap(message)
    result['context'] = context
    result['message'] = message
    if isinstance(message, dict):
        result['method'] = message.get('method')
        result['args'] = message.get('args')
        args = message.get('args')
        if (message.get('method') == '-reply' and isinstance(args, dict) and
                isinstance(args.get('msg'), list) and
                len(args['msg']) == 2):
            inner = _unwrap(args['msg'][1])
            result['call'] = {'msg_id': args.get('msg_id'),
                              'reply_topic': args.get('topic')}
            if isinstance(inner, dict):
                result['method'] = inner.get('method')
                result['args'] = inner.get('args')
    return result


def format_text(decoded):
    """*decoded* (from :func:`decode`) as lines for a terminal."""
    lines = ['--- %s  msg_id %s  %s' % (decoded['topic'], decoded['msg_id'],
                                        decoded['layout'])]
    if decoded['layout'] == 'unknown':
        lines.extend('frame %d: %s' % (i, f)
                     for i, f in enumerate(decoded['frames']))
        return '\n'.join(lines)
    lines.append('context: %s' % json.dumps(decoded['context'],
                                            sort_keys=True))
    if 'call' in decoded:
        lines.append('call:    reply to %s, msg_id %s' % (
            decoded['call']['reply_topic'], decoded['call']['msg_id']))
    if decoded['method'] is not None:
        lines.append('method:  %s' % decoded['method'])
        lines.append('args:    %s' % json.dumps(decoded['args'],
                                                sort_keys=True))
    else:
        lines.append('message: %s' % json.dumps(decoded['message'],
                                                sort_keys=True))
    return '\n'.join(lines)
