"""wire.implementation(): one object, chosen once, for the read path."""

import pytest

from zmq_receiver import wire


def test_pure_python_on_request():
    pure = wire.implementation(compiled=False)
    assert pure is wire.PURE_PYTHON
    assert not pure.compiled and pure.forward is None
    assert pure.recv_message is wire.py_recv_message
    assert pure.send_message is wire.py_send_message


def test_the_compiled_one_is_the_one_use_compiled_chose():
    # conftest calls use_compiled(); the daemon's choose_wire step calls
    # implementation(): both choose the same.
    chosen = wire.implementation()
    assert chosen.compiled == wire.FAST
    if not wire.FAST:
        pytest.skip('no compiled _wire: %s' % wire.FAST_PROBLEM)
    assert chosen.compiled and chosen.problem == ''
    # Bound once: the same object, with the functions use_compiled() set.
    assert wire.implementation() is chosen
    assert chosen.forward is wire.forward
    assert chosen.recv_message is wire.recv_message
    assert chosen.send_message is wire.send_message
