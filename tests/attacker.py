"""Another local user, as a process of its own, for the file attacks.

``python -m tests.attacker UID GID GROUPS ACTION ARGS...`` is started as
root, imports what it needs, then becomes UID:GID with the supplementary
GROUPS (comma-separated, or ``-``) for good, and only then attacks: it
never has a right the user it stands for has not.

Actions:

``flock PATH``
    Open PATH read-only (which ``flock`` is content with), take an
    exclusive lock on it, waiting for it as long as it takes, print
    ``locked`` and hold it until stdin closes.

``swap DIRECTORY PATTERN TARGET [CPU|- [new|closed]]``
    Watch DIRECTORY with inotify; whenever an entry whose name matches the
    regular expression PATTERN is made or moved in, rename a symlink to
    TARGET over it at once (the race a bind-then-chmod loses). A directory
    is renamed away first (rename cannot replace one with a symlink).
    Prints ``watching``, then runs until stdin closes and prints
    ``swapped N``: how many entries it replaced. With CPU, it runs on that
    CPU only. With ``closed``, it swaps an entry once a writer closed it
    instead of once it appears.
"""

import collections
import fcntl
import os
import re
import select
import sys

import inotify_simple


def become(uid, gid, groups):
    groups = [int(g) for g in groups.split(',')] if groups != '-' else []
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)


def hold_lock(path):
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    say('locked')
    sys.stdin.read()


def swap(directory, pattern, target, cpu=None, on='new'):
    if cpu is not None and cpu != '-':
        # On the CPU of the receiver's loop: woken by inotify, the swapper
        # may run before the loop's next system call, as a real attacker
        # arranges it.
        os.sched_setaffinity(0, {int(cpu)})
    names = re.compile(pattern)
    watcher = inotify_simple.INotify()
    if on == 'new':
        events = inotify_simple.flags.CREATE | inotify_simple.flags.MOVED_TO
    else:  # 'closed': once a writer closed it (it has been opened then)
        events = inotify_simple.flags.CLOSE_WRITE
    watcher.add_watch(directory, events)
    planter = Planter(directory, target)
    say('watching')
    swapped = 0
    while True:
        ready, _, _ = select.select([watcher, sys.stdin], [], [])
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            break
        if watcher not in ready:
            continue
        for event in watcher.read(timeout=0):
            if names.fullmatch(event.name):
                swapped += planter.swap(event)
    say('swapped %d' % swapped)


class Planter:
    """Symlinks to *target* in *directory*, the next one made before it is
    needed, so that a swap is a single rename."""

    def __init__(self, directory, target):
        self.directory = directory
        self.target = target
        self.made = 0
        self.ready = self._make()
        #: Names whose next event is our own rename into them.
        self.ours = collections.Counter()

    def _make(self):
        self.made += 1
        link = os.path.join(self.directory, '.planted.%d.%d' % (
            os.getpid(), self.made))
        os.symlink(self.target, link)
        return link

    def swap(self, event):
        """1 when a symlink now stands at the entry of *event*, else 0 (a
        directory gone already, or the sticky bit refused)."""
        if self.ours[event.name]:
            self.ours[event.name] -= 1
            return 0
        path = os.path.join(self.directory, event.name)
        try:
            if event.mask & inotify_simple.flags.ISDIR:
                # rename cannot put a symlink over a directory: move it.
                os.rename(path, os.path.join(
                    self.directory, '.stolen.%d' % self.made))
            os.rename(self.ready, path)
        except OSError:
            return 0
        self.ours[event.name] += 1
        self.ready = self._make()
        return 1


def say(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def main(argv):
    uid, gid, groups, action = int(argv[0]), int(argv[1]), argv[2], argv[3]
    become(uid, gid, groups)
    if action == 'flock':
        hold_lock(argv[4])
    elif action == 'swap':
        swap(*argv[4:9])
    else:
        raise SystemExit('unknown action %r' % action)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
