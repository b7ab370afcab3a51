"""The startup steps that read and check the configuration, in process.

The steps that bind, fork or drop privileges are covered by the functional
tests (test_lifecycle, test_systemd, test_environment); these are the ones
that only read: their errors must name the option, the file and the fix,
and carry the configuration's exit status.
"""

import os
import re
import resource
import types

import pytest

from zmq_receiver import cli
from zmq_receiver import errors
from zmq_receiver import ipcfile
from zmq_receiver import outlets
from zmq_receiver import privileges
from zmq_receiver import receiver
from zmq_receiver import startup


def config_file(tmp_path, text, name='receiver.conf'):
    """A config file holding *text*; its path."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def parsed(tmp_path, text='', args=()):
    """A Startup parsed from a config file holding *text* and *args*."""
    boot = startup.Startup(
        ['--config-file', config_file(tmp_path, text)] + list(args))
    startup.parse(boot)
    return boot


# -- the order ----------------------------------------------------------------


def test_the_docstring_lists_the_steps_in_the_order_they_run():
    documented = re.findall(r'^\d+\. ``(\w+)``', startup.__doc__, re.M)
    ran = [step.__name__ for step in startup.BEFORE_LOCK + startup.UNDER_LOCK]
    assert documented == ran


@pytest.mark.parametrize('before, after', [
    ('parse', 'start_logging'),
    ('start_logging', 'read_access_policy'),
    ('make_agent', 'take_lock'),
    ('take_lock', 'remove_stale_files'),
    ('detach', 'build_receiver'),
    ('raise_descriptors', 'bind'),
    ('bind', 'start_exporter'),
    ('start_exporter', 'drop_privileges'),
    ('drop_privileges', 'announce'),
])
def test_a_step_comes_after_what_it_needs(before, after):
    names = [s.__name__ for s in startup.BEFORE_LOCK + startup.UNDER_LOCK]
    assert names.index(before) < names.index(after)


def test_the_lock_is_the_last_step_before_the_steps_that_hold_it():
    assert startup.BEFORE_LOCK[-1] is startup.take_lock


# -- parse ----------------------------------------------------------------


def test_a_missing_config_file_is_a_config_error(tmp_path):
    missing = str(tmp_path / 'absent.conf')
    with pytest.raises(errors.ConfigError) as caught:
        startup.load_config(['--config-file', missing])
    assert str(caught.value) == (
        'Config file not found or unreadable: %s; check the --config-file '
        'path and its permissions' % missing)
    assert caught.value.exit_code == errors.EXIT_CONFIG


def test_a_config_file_that_does_not_parse_names_the_file(tmp_path):
    path = config_file(tmp_path, 'no section here\n')
    with pytest.raises(errors.ConfigError,
                       match='Config file %s cannot be parsed: '
                       % re.escape(path)):
        startup.load_config(['--config-file', path])


def test_a_bad_value_of_a_command_line_option_in_a_file_is_said_plainly(
        tmp_path):
    path = config_file(tmp_path, '[DEFAULT]\ndebug = maybe\n')
    with pytest.raises(errors.ConfigError) as caught:
        startup.load_config(['--config-file', path])
    text = str(caught.value)
    assert text.startswith('Invalid value in the config files: ')
    assert 'option debug' in text and 'argument --' not in text
    assert text.endswith('; fix it in the file')


def test_check_values_names_the_option_and_its_file(tmp_path):
    path = config_file(tmp_path, '[zmq_receiver]\nmax_topics = many\n')
    with pytest.raises(errors.ConfigError) as caught:
        startup.load_config(['--config-file', path])
    assert str(caught.value).startswith(
        '[zmq_receiver] max_topics in %s: ' % path)


def test_the_checks_stay_importable_from_cli():
    assert cli.check_values is startup.check_values
    assert cli.settings_from is startup.settings_from
    assert cli.load_config is startup.load_config
    assert cli.limits_from is startup.limits_from


# -- values ----------------------------------------------------------------


def test_settings_from_reads_the_configured_values(tmp_path):
    ipc = tmp_path / 'ipc'
    boot = parsed(tmp_path, '[DEFAULT]\nrpc_zmq_ipc_dir = %s\n'
                  'rpc_zmq_port = 9599\n[zmq_receiver]\nmax_topics = 7\n'
                  'max_frames = 5\n' % ipc)
    settings = startup.settings_from(boot.conf)
    assert isinstance(settings, receiver.Settings)
    assert settings.ipc_dir == str(ipc)
    assert settings.port == 9599
    assert settings.limits.max_topics == 7
    assert settings.max_frames == 5
    assert settings.access is None


def test_settings_from_takes_the_final_values_at_construction(tmp_path):
    boot = parsed(tmp_path)
    settings = startup.settings_from(boot.conf, ipc_dir='/run/made',
                                     access='policy')
    assert (settings.ipc_dir, settings.access) == ('/run/made', 'policy')


def test_a_relative_ipc_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    boot = parsed(tmp_path, '[DEFAULT]\nrpc_zmq_ipc_dir = here\n')
    startup.read_values(boot)
    assert boot.values['ipc_dir'] == str(tmp_path / 'here')


def test_an_unknown_socket_group_is_a_config_error(tmp_path):
    boot = parsed(tmp_path, '[zmq_receiver]\nsocket_group = '
                  'no-such-group-zmq-receiver\n')
    with pytest.raises(errors.ConfigError, match='socket_group'):
        startup.read_values(boot)


def test_limits_from_is_the_outlet_limits(tmp_path):
    boot = parsed(tmp_path, '[DEFAULT]\nrpc_zmq_topic_backlog = 12\n'
                  '[zmq_receiver]\nmax_backlog_bytes = 3000\n')
    limits = startup.limits_from(boot.conf)
    assert isinstance(limits, outlets.Limits)
    assert (limits.backlog, limits.backlog_bytes) == (12, 3000)
    assert limits.socket_gid == -1


# -- identity, daemon, pid file ---------------------------------------------


def test_an_unknown_user_is_a_config_error(tmp_path):
    boot = parsed(tmp_path, '[zmq_receiver]\nuser = no-such-user-zmq-rcv\n')
    with pytest.raises(errors.ConfigError):
        startup.resolve_identity(boot)


def test_no_user_means_the_current_identity(tmp_path):
    boot = parsed(tmp_path)
    startup.resolve_identity(boot)
    assert boot.ident.uid == os.geteuid()


def test_daemon_under_systemd_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv('NOTIFY_SOCKET', '/run/systemd/notify')
    boot = parsed(tmp_path, args=['--daemon'])
    with pytest.raises(errors.ConfigError,
                       match=r'^--daemon under systemd \(NOTIFY_SOCKET'):
        startup.refuse_daemon_under_systemd(boot)


def test_daemon_outside_systemd_and_systemd_without_daemon_pass(
        tmp_path, monkeypatch):
    monkeypatch.delenv('NOTIFY_SOCKET', raising=False)
    startup.refuse_daemon_under_systemd(parsed(tmp_path, args=['--daemon']))
    monkeypatch.setenv('NOTIFY_SOCKET', '/run/systemd/notify')
    startup.refuse_daemon_under_systemd(parsed(tmp_path))


def test_the_pid_file_is_in_the_ipc_dir_unless_configured(tmp_path):
    boot = parsed(tmp_path, args=['--daemon'])
    boot.ident = privileges.current()
    boot.ipc_dir = str(tmp_path)
    startup.choose_pid_file(boot)
    assert boot.pid_file == str(tmp_path / '.zmq-receiver.pid')


def test_no_pid_file_without_daemon(tmp_path):
    boot = parsed(tmp_path)
    boot.ipc_dir = str(tmp_path)
    startup.choose_pid_file(boot)
    assert boot.pid_file is None


def test_a_pid_file_in_a_missing_directory_is_refused(tmp_path):
    path = str(tmp_path / 'absent' / 'receiver.pid')
    with pytest.raises(errors.PermissionProblem,
                       match='create it or set \\[zmq_receiver\\] pid_file'):
        startup.check_pid_file_dir(path, privileges.current())


def test_a_pid_file_the_user_could_not_remove_is_refused(tmp_path):
    directory = tmp_path / 'root-only'
    directory.mkdir(mode=0o755)
    nobody = privileges.Identity(65534, 65534, 'nobody')
    if os.stat(directory).st_uid == nobody.uid:
        pytest.skip('the test runs as uid 65534')
    with pytest.raises(errors.PermissionProblem) as caught:
        startup.check_pid_file_dir(str(directory / 'r.pid'), nobody)
    assert 'cannot remove it when it stops' in str(caught.value)
    assert caught.value.exit_code == errors.EXIT_PERMISSION


def test_the_descriptor_limit_is_not_lowered():
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert startup.raise_descriptor_limit(1) == soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft


# -- reload ----------------------------------------------------------------


def test_the_reloader_returns_the_new_limits(tmp_path):
    boot = parsed(tmp_path, '[zmq_receiver]\nmax_backlog_bytes = 1000\n')
    reload = startup.Reloader(boot.conf)
    config_file(tmp_path, '[zmq_receiver]\nmax_backlog_bytes = 2000\n')
    limits = reload()
    assert limits.backlog_bytes == 2000


def test_a_reload_without_its_file_says_to_restore_it(tmp_path):
    boot = parsed(tmp_path)
    reload = startup.Reloader(boot.conf)
    os.unlink(tmp_path / 'receiver.conf')
    with pytest.raises(errors.ConfigError) as caught:
        reload()
    assert str(caught.value).endswith('; restore it and send SIGHUP again')


# -- main -----------------------------------------------------------------


def test_main_turns_a_startup_error_into_its_exit_status(tmp_path, capsys):
    missing = str(tmp_path / 'absent.conf')
    assert cli.main(['--config-file', missing]) == errors.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err == ('%s: error: Config file not found or unreadable: %s; '
                   'check the --config-file path and its permissions\n'
                   % (startup.PROG, missing))


# -- the IPC directory under the lock -----------------------------------------


def test_an_ipc_dir_replaced_while_it_is_cleaned_is_refused(tmp_path,
                                                            monkeypatch):
    """Whoever may write the IPC directory's parent can replace it between
    the two looks of remove_stale_files (tests/functional/
    test_security_files.py races a real attacker process there, and once
    got an internal error, exit 70). Here the swap is made at that very
    point, deterministically: the start is refused (77), naming the
    directory and the fix."""
    ipc = tmp_path / 'zmq'
    ipc.mkdir()
    real = ipcfile.remove_stale

    def swapped_first(directory):
        os.rename(directory, str(tmp_path / 'moved'))
        ipc.write_text('not a directory')
        return real(directory)
    monkeypatch.setattr(ipcfile, 'remove_stale', swapped_first)
    # uid 0: acting_as has nothing to do (the swap is the user's own).
    boot = types.SimpleNamespace(ipc_dir=str(ipc),
                                 ident=types.SimpleNamespace(uid=0))
    assert_refused_to_clean(boot)


def test_an_ipc_dir_replaced_before_it_is_cleaned_is_refused(tmp_path):
    """The same when the swap came before the first look."""
    ipc = tmp_path / 'zmq'
    ipc.write_text('not a directory')
    assert_refused_to_clean(types.SimpleNamespace(
        ipc_dir=str(ipc), ident=types.SimpleNamespace(uid=0)))


def assert_refused_to_clean(boot):
    with pytest.raises(errors.PermissionProblem) as exc:
        startup.remove_stale_files(boot)
    assert exc.value.exit_code == errors.EXIT_PERMISSION
    assert str(exc.value) == (
        'Cannot clean the IPC directory %s: Not a directory; make sure that '
        'only the receiver\'s user may write it and its parent' % boot.ipc_dir)
