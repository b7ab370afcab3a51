"""``./dev image-test``: build the container image and run it as a platform
would. Not in CI: it needs podman, debootstrap and a few minutes.

No base image can be pulled here, so the base is made: a Debian 12 tree
from ``debootstrap --variant=minbase`` with python3 and pip (kept in a
cache outside the checkout and reused), imported with ``podman import``.
Then, each step timed:

1. ``podman build --format docker`` of the Containerfile on that base, as
   the README writes it; the image must keep its HEALTHCHECK (an OCI build
   drops it, which is shown for comparison);
2. ``podman run`` under an arbitrary uid with no passwd entry, group 0, a
   read-only root file system, no network, and the IPC volume a directory
   of that uid: the log must say the compiled loop runs, the root must be
   read-only for it;
3. ``podman healthcheck run``: healthy;
4. SIGTERM: the container ends with status 0 in under 1 s.

Exit status 0 when every step passed, 1 otherwise.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get('ZMQ_RECEIVER_IMAGE_CACHE',
                       '/var/cache/oslo-messaging-zmq-receiver')
MIRROR = os.environ.get('DEBIAN_MIRROR', 'http://deb.debian.org/debian')
BASE = 'localhost/zmq-receiver-base:bookworm'
IMAGE = 'localhost/oslo-messaging-zmq-receiver:image-test'
#: An arbitrary uid with no passwd entry, as OpenShift assigns.
UID = 4242421
STOP_LIMIT = 1.0
HOST_CA = '/etc/ssl/certs/ca-certificates.crt'
#: crun refuses a host whose cgroups are in hybrid mode (v1 controllers
#: with a v2 hierarchy beside them); runc runs there.
PODMAN = ['podman'] + (['--runtime', 'runc'] if shutil.which('runc') else [])
#: podman asks for limits above the host's own by default, which a host
#: without CAP_SYS_RESOURCE (a sandbox) refuses: ask for what it has.
LIMITS = ['--ulimit', 'nofile=%d:%d' % ((resource.getrlimit(
    resource.RLIMIT_NOFILE)[1],) * 2), '--ulimit', 'nproc=4096:4096']


class Steps:
    """Prints each step's outcome and time; counts the failures."""

    def __init__(self):
        self.failed = 0

    def result(self, ok, what, seconds=None):
        took = '' if seconds is None else ' (%.2f s)' % seconds
        print('%s  %s%s' % ('PASS' if ok else 'FAIL', what, took),
              flush=True)
        if not ok:
            self.failed += 1
        return ok


def run(argv, check=True, **kwargs):
    """Run *argv*; its CompletedProcess (text, output captured)."""
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        said = (result.stdout + result.stderr).splitlines()
        raise SystemExit('image-test: %s failed (status %d):\n%s' % (
            ' '.join(argv), result.returncode, '\n'.join(said[-40:])))
    return result


def timed(function, *args, **kwargs):
    start = time.monotonic()
    value = function(*args, **kwargs)
    return value, time.monotonic() - start


def debian_tree():
    """The cached Debian 12 tree; made by debootstrap when missing."""
    tree = os.path.join(CACHE, 'bookworm-minbase')
    if os.path.isdir(tree):
        return tree, False
    os.makedirs(CACHE, exist_ok=True)
    partial = tree + '.partial'
    shutil.rmtree(partial, ignore_errors=True)
    print('image-test: debootstrap of Debian 12 into %s (once; reused '
          'afterwards)' % tree, flush=True)
    run(['debootstrap', '--variant=minbase',
         '--include=python3,python3-pip,ca-certificates', 'bookworm',
         partial, MIRROR], timeout=1800)
    # As in the python images: pip installs into the system's Python
    # (Debian marks it externally managed, PEP 668).
    for name in os.listdir(os.path.join(partial, 'usr', 'lib')):
        marker = os.path.join(partial, 'usr', 'lib', name,
                              'EXTERNALLY-MANAGED')
        if name.startswith('python3') and os.path.exists(marker):
            os.unlink(marker)
    shutil.rmtree(os.path.join(partial, 'var', 'cache', 'apt', 'archives'),
                  ignore_errors=True)
    os.rename(partial, tree)
    return tree, True


def import_base(tree, fresh):
    """``podman import`` of *tree* as :data:`BASE`, unless already there."""
    if not fresh and run(PODMAN + ['image', 'exists', BASE],
                         check=False).returncode == 0:
        return
    # The host's CA bundle: where a proxy re-signs TLS (pip's PyPI), the
    # build needs its CA too, as a site's own base image would have it.
    if os.path.exists(HOST_CA):
        shutil.copyfile(HOST_CA, os.path.join(tree, HOST_CA.lstrip('/')))
    tar = subprocess.Popen(['tar', '-C', tree, '--numeric-owner', '-c', '.'],
                           stdout=subprocess.PIPE)
    run(PODMAN + ['import', '--change', 'CMD ["/bin/bash"]', '-', BASE],
        stdin=tar.stdout)
    tar.stdout.close()
    if tar.wait() != 0:
        raise SystemExit('image-test: tar of %s failed' % tree)


def build(image_format, tag):
    return run(PODMAN + ['build', '--format', image_format] + LIMITS + [
        '--network', 'host', '--build-arg', 'BASE=' + BASE,
        '-t', tag, '-f', 'Containerfile', '.'], cwd=REPO, timeout=1800)


def health_check_of(image):
    data = json.loads(run(PODMAN + ['image', 'inspect', image]).stdout)[0]
    return data.get('Healthcheck') or (data.get('Config') or {}).get(
        'Healthcheck')


def logs(name):
    result = run(PODMAN + ['logs', name], check=False)
    return result.stdout + result.stderr


def wait_for_log(name, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        said = logs(name)
        if text in said:
            return said
        # podman offers no event for a log line: poll, bounded.
        time.sleep(0.2)
    return None


def health_status(name):
    state = json.loads(run(PODMAN + ['inspect', name]).stdout)[0]['State']
    health = state.get('Health') or state.get('Healthcheck') or {}
    return health.get('Status')


def run_container(steps, ipc_dir):
    name = 'zr-image-test-%d' % os.getpid()
    run(PODMAN + ['run', '-d', '--name', name, '--user', '%d:0' % UID] +
        LIMITS + ['--read-only', '--network', 'none',
                  '-v', '%s:/var/run/openstack' % ipc_dir,
                  '-e', 'OS_DEFAULT__RPC_ZMQ_HOST=imagetest', IMAGE])
    try:
        said, took = timed(wait_for_log, name, 'listening on', 60)
        if not steps.result(said is not None, 'the receiver listens', took):
            print(logs(name))
            return
        steps.result('Forwarding loop: compiled' in said,
                     'it runs the compiled forwarding loop')
        probe = run(PODMAN + ['exec', name, 'sh', '-c',
                     'id -u; touch /probe 2>&1 || true'], check=False)
        lines = probe.stdout.splitlines()
        steps.result(lines[:1] == [str(UID)],
                     'it runs as uid %d (no passwd entry): %s' % (
                         UID, lines[:1]))
        steps.result('Read-only file system' in probe.stdout,
                     'its root file system is read-only: %s' % (
                         ' '.join(lines[1:]) or 'writable'))
        check, took = timed(run, PODMAN + ['healthcheck', 'run', name],
                            check=False)
        status = health_status(name)
        steps.result(check.returncode == 0 and status == 'healthy',
                     'health check: status %d, reported %s' % (
                         check.returncode, status), took)
        start = time.monotonic()
        run(PODMAN + ['kill', '--signal', 'TERM', name])
        waited = run(PODMAN + ['wait', '--interval', '20ms', name])
        took = time.monotonic() - start
        code = waited.stdout.strip()
        steps.result(code == '0' and took < STOP_LIMIT,
                     'SIGTERM: exit status %s in under %.0f s' % (
                         code, STOP_LIMIT), took)
    finally:
        run(PODMAN + ['rm', '-f', name], check=False)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='./dev image-test', description=__doc__.split('\n\n')[0])
    parser.parse_args(argv)
    steps = Steps()
    (tree, fresh), took = timed(debian_tree)
    steps.result(True, 'Debian 12 tree %s (%s)' % (
        tree, 'made' if fresh else 'cached'), took)
    _, took = timed(import_base, tree, fresh)
    steps.result(True, 'base image %s (podman import)' % BASE, took)
    _, took = timed(build, 'docker', IMAGE)
    check = health_check_of(IMAGE)
    steps.result(bool(check) and 'oslo-messaging-zmq-admin' in str(check),
                 'podman build --format docker keeps the HEALTHCHECK: %s'
                 % (check,), took)
    oci = IMAGE + '-oci'
    _, took = timed(build, 'oci', oci)
    print('note  podman build --format oci (the default) leaves the '
          'HEALTHCHECK out: %s (%.2f s)' % (health_check_of(oci), took))
    run(PODMAN + ['rmi', oci], check=False)
    ipc_dir = tempfile.mkdtemp(prefix='zr-image-ipc')
    try:
        os.chown(ipc_dir, UID, 0)
        os.chmod(ipc_dir, 0o750)
        run_container(steps, ipc_dir)
    finally:
        shutil.rmtree(ipc_dir, ignore_errors=True)
    print('image-test: %s' % ('all passed' if not steps.failed else
                              '%d failed' % steps.failed))
    return 1 if steps.failed else 0


if __name__ == '__main__':
    sys.exit(main())
