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

``swap DIRECTORY PATTERN TARGET``
    Watch DIRECTORY with inotify; whenever an entry whose name matches the
    regular expression PATTERN is made or moved in, rename a symlink to
    TARGET over it at once (the race a bind-then-chmod loses). A directory
    is renamed away first (rename cannot replace one with a symlink).
    Prints ``watching``, then runs until stdin closes and prints
    ``swapped N``.
"""

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


def swap(directory, pattern, target):
    names = re.compile(pattern)
    watcher = inotify_simple.INotify()
    watcher.add_watch(directory, inotify_simple.flags.CREATE |
                      inotify_simple.flags.MOVED_TO)
    say('watching')
    swapped = 0
    while True:
        ready, _, _ = select.select([watcher, sys.stdin], [], [])
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            break
        if watcher not in ready:
            continue
        for event in watcher.read(timeout=0):
            if not names.fullmatch(event.name):
                continue
            swapped += _swap_one(directory, event.name, target, swapped)
    say('swapped %d' % swapped)


def _swap_one(directory, name, target, n):
    path = os.path.join(directory, name)
    link = os.path.join(directory, '.planted.%d.%d' % (os.getpid(), n))
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rename(path, os.path.join(directory, '.stolen.%d.%d' % (
                os.getpid(), n)))
        os.symlink(target, link)
        os.rename(link, path)
        return 1
    except OSError:
        # Lost the race this time (the entry moved on already).
        try:
            os.unlink(link)
        except OSError:
            pass
        return 0


def say(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def main(argv):
    uid, gid, groups, action = int(argv[0]), int(argv[1]), argv[2], argv[3]
    become(uid, gid, groups)
    if action == 'flock':
        hold_lock(argv[4])
    elif action == 'swap':
        swap(argv[4], argv[5], argv[6])
    else:
        raise SystemExit('unknown action %r' % action)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
