"""ipcfile: binding a socket file without following anything at its path.

The race with another user is in tests/functional/test_security_files.py;
here what one process can show by itself: a link at the path is replaced,
never followed; a bind that cannot finish leaves no listener behind; and
what a receiver killed in the middle of a bind left is cleaned up.
"""

import os
import socket
import stat

import pytest
import zmq

from tests.support import open_files as open_files_of, recv, wait_until
from zmq_receiver import ipcfile


def open_files():
    return open_files_of(os.getpid())


@pytest.fixture
def push(ctx):
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    yield sock
    sock.close()


def test_a_symlink_at_the_path_is_replaced_not_followed(short_dir, ctx,
                                                        push):
    target = os.path.join(short_dir, 'private')
    with open(target, 'w') as f:
        f.write('secret\n')
    os.chmod(target, 0o600)
    path = os.path.join(short_dir, 'zmq_topic_a.host1')
    os.symlink(target, path)
    ipcfile.bind(push, path, 0o660)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    with open(target) as f:
        assert f.read() == 'secret\n'
    # Only the socket and the target: the private directory is gone.
    assert sorted(os.listdir(short_dir)) == ['private', 'zmq_topic_a.host1']
    pull = ctx.socket(zmq.PULL)
    pull.connect('ipc://' + path)
    push.send(b'through the renamed file')
    assert recv(pull) == [b'through the renamed file']
    pull.close()


def test_a_bind_that_cannot_finish_leaves_no_listener(short_dir, push):
    # rename cannot replace a directory: every try fails after the bind.
    path = os.path.join(short_dir, 'zmq_topic_b.host1')
    os.mkdir(path)
    with pytest.raises(OSError):
        ipcfile.bind(push, path, 0o660)  # libzmq's threads start now
    before = open_files()
    for _ in range(20):
        with pytest.raises(OSError):
            ipcfile.bind(push, path, 0o660)
    # Before the unbind, each try kept a listener and its descriptor
    # (libzmq closes them in its own thread, soon after).
    wait_until(lambda: open_files() <= before + 2, 'the listeners closing')
    assert os.listdir(short_dir) == ['zmq_topic_b.host1']


def test_what_a_killed_bind_left_is_removed(short_dir):
    left = os.path.join(short_dir, ipcfile.PREFIX + 'abcd1234')
    os.mkdir(left, 0o700)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.path.join(left, 'abcd1234'))
    # Not a directory of ours: left alone.
    elsewhere = os.path.join(short_dir, 'elsewhere')
    os.mkdir(elsewhere)
    os.symlink(elsewhere, os.path.join(short_dir, ipcfile.PREFIX + 'link'))
    assert ipcfile.remove_stale(short_dir) == 1
    assert sorted(os.listdir(short_dir)) == ['.zmq-receiver-bind.link',
                                             'elsewhere']
