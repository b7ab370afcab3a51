"""The README's run command starts a receiver that a client reaches.

The command is read from the README itself, so that the two cannot drift
apart. Only the port and the IPC directory are moved (by environment
variables, which oslo.config reads over the config file), so that the test
does not collide with a development receiver running in this checkout.
"""

import os
import re
import signal
import subprocess

from tests import support
from tests.output import ProcessOutput


def readme_text():
    with open(os.path.join(support.REPO, 'README.md')) as f:
        return f.read()


def readme_commands():
    """The commands of the README's first code block, comments removed."""
    block = re.search(r'```sh\n(.*?)```', readme_text(), re.DOTALL).group(1)
    return [line.split('#', 1)[0].strip() for line in block.splitlines()
            if line.strip()]


def test_readme_starts_with_the_run_and_test_commands():
    run, test = readme_commands()[:2]
    assert run == './dev run'
    assert test == './dev test'
    with open(os.path.join(support.REPO, '.ci', 'run')) as f:
        assert re.search(r'^exec %s$' % re.escape(test), f.read(), re.M)


def test_the_readme_run_command_forwards(ctx, short_dir):
    run = readme_commands()[0]
    ipc_dir = os.path.join(short_dir, 'ipc')
    env = support.clean_env(OS_DEFAULT__RPC_ZMQ_PORT='0',
                            OS_DEFAULT__RPC_ZMQ_IPC_DIR=ipc_dir)
    proc = subprocess.Popen(run.split(), cwd=support.REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    output = ProcessOutput(proc)
    try:
        endpoint = output.wait_for(r'listening on (tcp://127\.0\.0\.1:\d+),',
                                   support.TIMEOUT).group(1)
        consumer = ctx.socket(support.zmq.PULL)
        consumer.connect('ipc://%s/zmq_topic_compute.localhost' % ipc_dir)
        sender = ctx.socket(support.zmq.PUSH)
        sender.connect(endpoint)
        frames = support.cast('compute.localhost')
        sender.send_multipart(frames)
        assert support.recv(consumer) == frames
        # The README's send, as on a stock Debian: localhost is ::1 first.
        send = re.search(r'^(\.venv/bin/oslo-messaging-zmq-admin .* send '
                         r'compute)$', readme_text(), re.M).group(1).split()
        port = endpoint.rsplit(':', 1)[1]
        sent = support.run_with_hosts(
            support.DEBIAN_HOSTS['ipv6-first'],
            [os.path.join(support.REPO, send[0])] + send[1:],
            env={'OS_DEFAULT__RPC_ZMQ_PORT': port,
                 'OS_DEFAULT__RPC_ZMQ_IPC_DIR': ipc_dir}, cwd=support.REPO)
        support.assert_debian_localhost('ipv6-first', sent)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert support.recv(consumer)[:3] == [b'0', b'compute.localhost',
                                              b'cast']
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=support.TIMEOUT)
    assert proc.returncode == 0, output.log()
    support.close_all(consumer, sender)


def test_every_podman_build_keeps_the_health_check():
    # podman's default (OCI) image format drops HEALTHCHECK.
    with open(os.path.join(support.REPO, 'Containerfile')) as f:
        containerfile = f.read()
    builds = re.findall(r'podman build .*', readme_text() + containerfile)
    assert len(builds) >= 2, builds
    for build in builds:
        assert '--format docker' in build, build
