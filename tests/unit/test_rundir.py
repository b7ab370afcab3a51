"""rundir's creation of a missing IPC directory, as root does it."""

import os
import stat

from zmq_receiver import rundir


def test_directories_on_the_way_are_not_writable_by_others(tmp_path):
    # A umask of 0 (a shell's, a container's) must not leave a directory
    # in which another user may swap the IPC directory.
    old = os.umask(0)
    try:
        fd = rundir._make_dirs(str(tmp_path / 'a' / 'b' / 'ipc'))
    finally:
        os.umask(old)
    os.close(fd)
    for part in ('a', 'a/b'):
        mode = stat.S_IMODE(os.stat(tmp_path / part).st_mode)
        assert not mode & (stat.S_IWGRP | stat.S_IWOTH), (part, oct(mode))
    assert stat.S_IMODE(os.stat(tmp_path / 'a/b/ipc').st_mode) == 0o700
