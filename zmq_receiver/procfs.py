"""What /proc tells about other processes: their descriptors, locks and
uids. Another user's descriptors are visible to root only."""

import os


def pids_with_descriptor(matches):
    """Pids of the processes with an open descriptor for which
    *matches* (its /proc/PID/fd/N path) is true, of those this process
    may see."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        fd_dir = '/proc/%s/fd' % pid
        try:
            for fd in os.listdir(fd_dir):
                if matches(os.path.join(fd_dir, fd)):
                    pids.add(int(pid))
                    break
        except OSError:
            continue
    return pids


def openers(st):
    """Pids with a descriptor open on the file with stat *st*."""
    def same(fd_path):
        try:
            target = os.stat(fd_path)
        except OSError:  # closed meanwhile
            return False
        return (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino)
    return pids_with_descriptor(same)


def lockers(st):
    """Pids that /proc/locks shows holding or awaiting a lock on the file
    with stat *st* (the pid that took it, which may have exited since)."""
    device = '%02x:%02x:%d' % (os.major(st.st_dev), os.minor(st.st_dev),
                               st.st_ino)
    pids = set()
    try:
        with open('/proc/locks') as table:
            for line in table:
                fields = line.replace('->', '').split()
                if len(fields) > 5 and fields[5] == device:
                    pids.add(int(fields[4]))
    except (OSError, ValueError):
        pass
    return pids


def euid(pid):
    """The effective uid of process *pid*, or None when it is gone."""
    try:
        with open('/proc/%d/status' % pid) as status:
            for line in status:
                if line.startswith('Uid:'):
                    return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        pass
    return None
