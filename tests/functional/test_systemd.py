"""The shipped deployment files, and the receiver as a container runs it.

``systemd/`` (the unit template and the tmpfiles.d entry) is checked by
``systemd-analyze verify`` where that tool works, and for the settings the
receiver relies on; the ``Containerfile`` for a non-root user, a health
check that needs no curl and the receiver as entrypoint. Then the receiver
is run the way the container runs it: no config file, only ``OS_*``
environment variables, under a uid with no passwd entry, and probed with
``oslo-messaging-zmq-admin health``.
"""

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from oslo_config import cfg
import zmq

from tests import support
from zmq_receiver import errors
from zmq_receiver import opts

UNIT = os.path.join(support.REPO, 'systemd',
                    'oslo-messaging-zmq-receiver@.service')
TMPFILES = os.path.join(support.REPO, 'systemd',
                        'oslo-messaging-zmq-receiver.tmpfiles')
SYSUSERS = os.path.join(support.REPO, 'systemd',
                        'oslo-messaging-zmq-receiver.sysusers')
SHARED_GROUP = os.path.join(support.REPO, 'systemd', 'shared-group.conf')
#: Where the README's Install section puts the package.
INSTALLED = '/opt/oslo-messaging-zmq-receiver/bin/oslo-messaging-zmq-receiver'
CONTAINERFILE = os.path.join(support.REPO, 'Containerfile')
#: The venv's console scripts, as pip installed them.
BIN = os.path.dirname(sys.executable)
RECEIVER = os.path.join(BIN, 'oslo-messaging-zmq-receiver')
ADMIN = os.path.join(BIN, 'oslo-messaging-zmq-admin')
#: A uid with no passwd entry, as OpenShift assigns.
CONTAINER_UID = 4242422


def unit_settings(path):
    """{key: [values]} of a unit file (comments and sections dropped)."""
    settings = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in '#;[':
                continue
            key, _, value = line.partition('=')
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value):
    """A systemd time span like ``30s``, ``2min`` or ``1min 30s``."""
    units = {'': 1, 's': 1, 'sec': 1, 'min': 60, 'm': 60, 'h': 3600,
             'ms': 0.001}
    total = 0.0
    for number, unit in re.findall(r'(\d+(?:\.\d+)?)\s*([a-z]*)', value):
        total += float(number) * units[unit]
    return total


def instruction(lines, name):
    """The arguments of every *name* instruction of a Containerfile."""
    return [line.split(None, 1)[1] for line in lines
            if line.split(None, 1)[0:1] == [name]]


def containerfile_lines():
    """The Containerfile's instructions, continuation lines joined."""
    with open(CONTAINERFILE) as f:
        text = f.read().replace('\\\n', ' ')
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith('#')]


# -- systemd -------------------------------------------------------------


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which('systemd-analyze')
    if analyze is None:
        pytest.skip('systemd-analyze is not installed')
    # A known-good unit first: if even that fails, the tool cannot work in
    # this environment (no systemd, a container without /run/systemd ...).
    probe = tmp_path / 'zr-probe.service'
    probe.write_text('[Service]\nType=oneshot\nExecStart=%s\n'
                     % shutil.which('true'))
    result = subprocess.run([analyze, 'verify', '--man=no', str(probe)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = ('systemd-analyze verify does not work here: '
                  + (result.stderr or result.stdout).strip())
        print(reason)
        pytest.skip(reason)
    with open(UNIT) as f:
        text = f.read()
    assert os.access(RECEIVER, os.X_OK), RECEIVER
    # The packaged path is not installed here; the venv's script is.
    text, count = re.subn(r'^ExecStart=\S+oslo-messaging-zmq-receiver\b',
                          'ExecStart=' + RECEIVER, text, flags=re.M)
    assert count == 1, 'ExecStart= does not run oslo-messaging-zmq-receiver'
    (tmp_path / os.path.basename(UNIT)).write_text(text)
    instance = tmp_path / 'oslo-messaging-zmq-receiver@nova.service'
    result = subprocess.run([analyze, 'verify', '--man=no', str(instance)],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    # Unknown keys and bad values are only warnings (status 0): any line
    # naming our unit is a finding.
    ours = [line for line in output.splitlines()
            if 'oslo-messaging-zmq-receiver' in line]
    assert result.returncode == 0 and not ours, output


def test_unit_is_a_notify_service_with_a_watchdog():
    unit = unit_settings(UNIT)
    assert unit['Type'] == ['notify']
    assert seconds(unit['WatchdogSec'][0]) > 0
    assert unit['User'] == ['%i']
    assert re.search(r'--config-file /etc/%i/%i\.conf\b',
                     unit['ExecStart'][0])
    # Restarting cannot fix an operator's mistake.
    statuses = ' '.join(unit['RestartPreventExitStatus']).split()
    for status in (errors.EXIT_PERMISSION, errors.EXIT_CONFIG):
        assert str(status) in statuses, statuses
    # A graceful stop may take the whole shutdown_timeout to drain.
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    assert (seconds(unit['TimeoutStopSec'][0]) >
            conf[opts.GROUP].shutdown_timeout)


def test_unit_runs_what_the_readme_installs():
    unit = unit_settings(UNIT)
    assert unit['ExecStart'][0].split()[0] == INSTALLED
    with open(os.path.join(support.REPO, 'README.md')) as f:
        readme = f.read()
    venv = os.path.dirname(os.path.dirname(INSTALLED))
    assert 'python3 -m venv %s\n' % venv in readme
    assert '%s/bin/pip install ' % venv in readme


def test_a_permanent_failure_stops_restarting():
    unit = unit_settings(UNIT)
    assert unit['Restart'] == ['on-failure']
    # The start limit must be reachable: the burst's restarts, RestartSec
    # apart, fit in the interval.
    burst = int(unit['StartLimitBurst'][0])
    interval = seconds(unit['StartLimitIntervalSec'][0])
    assert 1 < burst and (burst - 1) * seconds(unit['RestartSec'][0]) < \
        interval / 2
    statuses = ' '.join(unit['RestartPreventExitStatus']).split()
    # systemd's 203/EXEC and 217/USER, and ours that need the operator.
    for status in ('203', '217', str(errors.EXIT_USAGE),
                   str(errors.EXIT_ALREADY_RUNNING)):
        assert status in statuses, statuses
    # Transient ones are retried.
    for status in (errors.EXIT_ADDRESS_IN_USE, errors.EXIT_INTERNAL):
        assert str(status) not in statuses, statuses


def test_shared_group_dropin_adds_the_group_without_replacing_it():
    dropin = unit_settings(SHARED_GROUP)
    assert dropin['SupplementaryGroups'] == ['openstack']
    assert 'Group' not in dropin
    assert dropin['RuntimeDirectory'] == ['']
    assert dropin['ReadWritePaths'] == ['/run/openstack']


def test_sysusers_makes_the_group_the_tmpfiles_entry_needs(tmp_path):
    sysusers = shutil.which('systemd-sysusers')
    tmpfiles = shutil.which('systemd-tmpfiles')
    if sysusers is None or tmpfiles is None or os.geteuid() != 0:
        reason = 'needs root and systemd-sysusers, systemd-tmpfiles'
        print(reason)
        pytest.skip(reason)
    # A root of its own: the host's users and groups stay as they are.
    etc = tmp_path / 'etc'
    etc.mkdir()
    for name in ('passwd', 'group', 'shadow', 'gshadow'):
        (etc / name).write_text('root:x:0:\n' if name == 'group' else '')
    result = subprocess.run([sysusers, '--root', str(tmp_path), SYSUSERS],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    groups = dict(line.split(':')[0:3:2] for line in
                  (etc / 'group').read_text().splitlines())
    assert 'openstack' in groups, groups
    result = subprocess.run([tmpfiles, '--root', str(tmp_path), '--create',
                             TMPFILES], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    st = os.stat(tmp_path / 'run' / 'openstack')
    assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == (
        '0o2775', 0, int(groups['openstack']))


def test_unit_is_hardened():
    unit = unit_settings(UNIT)
    assert unit['NoNewPrivileges'] == ['yes']
    assert unit['ProtectSystem'][0] in ('strict', 'full', 'yes')
    assert unit['PrivateTmp'] == ['yes']
    assert unit['ProtectHome'][0] in ('yes', 'read-only', 'tmpfs')


def test_tmpfiles_entry_is_a_setgid_group_directory():
    with open(TMPFILES) as f:
        entries = [line.split() for line in f
                   if line.strip() and not line.lstrip().startswith('#')]
    dirs = [fields for fields in entries if fields[0] == 'd']
    assert dirs, entries
    # Type Path Mode User Group Age: setgid, group-writable, not world.
    assert all(fields[2] == '2775' for fields in dirs), dirs


# -- the container -------------------------------------------------------


def test_containerfile_runs_the_receiver_as_a_user_with_a_health_check():
    lines = containerfile_lines()
    users = instruction(lines, 'USER')
    assert users, 'no USER: the receiver would run as root'
    assert users[-1].split(':')[0] not in ('root', '0')
    checks = instruction(lines, 'HEALTHCHECK')
    assert len(checks) == 1
    assert 'oslo-messaging-zmq-admin' in checks[0]
    assert 'curl' not in checks[0] and 'wget' not in checks[0]
    entrypoints = instruction(lines, 'ENTRYPOINT')
    assert entrypoints and 'oslo-messaging-zmq-receiver' in entrypoints[-1]


def test_containerfile_environment_names_real_options():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    known = {('DEFAULT', opt.dest.upper())
             for opt in opts.legacy_opts}
    known |= {(opts.GROUP.upper(), opt.dest.upper())
              for opt in opts.receiver_opts}
    names = []
    for env in instruction(containerfile_lines(), 'ENV'):
        for word in shlex.split(env):
            name = word.split('=', 1)[0]
            if name.startswith('OS_'):
                names.append(name)
    assert names
    for name in names:
        group, _, option = name[3:].partition('__')
        # A misspelt variable is silently ignored by oslo.config.
        assert (group, option) in known, name


def admin_health(env, timeout=2):
    """``oslo-messaging-zmq-admin health`` with *env*: its exit status."""
    result = subprocess.run(
        [ADMIN, 'health', '--timeout', str(timeout)], env=env,
        capture_output=True, text=True, timeout=support.TIMEOUT + timeout)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to switch uid')
def test_configured_by_environment_alone_under_an_arbitrary_uid(
        ctx, daemons, short_dir):
    with pytest.raises(KeyError):
        pwd.getpwuid(CONTAINER_UID)
    # The volume, writable for the uid the platform picked.
    os.chmod(short_dir, 0o755)
    ipc = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc, 0o755)
    os.chown(ipc, CONTAINER_UID, CONTAINER_UID)
    env = {
        'OS_DEFAULT__RPC_ZMQ_IPC_DIR': ipc,
        'OS_DEFAULT__RPC_ZMQ_BIND_ADDRESS': '127.0.0.1',
        'OS_DEFAULT__RPC_ZMQ_PORT': '0',
        'OS_ZMQ_RECEIVER__USER': str(CONTAINER_UID),
    }
    daemon = daemons(short_dir, env=env, config=False)
    assert not os.path.exists(daemon.config_file)
    assert daemon.ipc_dir == ipc
    with open('/proc/%d/status' % daemon.proc.pid) as f:
        uid_line = next(line for line in f if line.startswith('Uid:'))
    assert uid_line.split()[1:] == [str(CONTAINER_UID)] * 4
    # Configured by the environment: it serves that directory.
    consumer = ctx.socket(zmq.PULL)
    consumer.connect(daemon.outlet('compute.pod1'))
    frames = support.cast('compute.pod1')
    out = support.sender(ctx, daemon)
    out.send_multipart(frames)
    assert support.recv(consumer) == frames
    admin_env = support.clean_env(env)
    status, output = admin_health(admin_env)
    assert status == 0, output
    assert daemon.stop() == errors.EXIT_OK
    status, output = admin_health(admin_env, timeout=1)
    assert status == 1, output
    assert 'No receiver answered' in output
    support.close_all(consumer, out)
