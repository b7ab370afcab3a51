"""cli.check_values and cli.settings_from, in-process, on real config files.

The functional tests see these through the daemon's exit status and its one
line on stderr; here the same files are parsed by oslo.config in the test
process, and what comes back (the error's wording, the Settings' values)
is checked directly.
"""

import os

import pytest
from oslo_config import cfg

from tests import support
from zmq_receiver import cli
from zmq_receiver import errors
from zmq_receiver import opts


@pytest.fixture
def config(tmp_path, monkeypatch):
    """Parse {section: {option: value}} as the receiver's only config file:
    (ConfigOpts, the file's path)."""
    # No OS_* variable of the caller's may count.
    for name in list(os.environ):
        if name.startswith('OS_'):
            monkeypatch.delenv(name)

    def parse(options):
        path = support.write_config(str(tmp_path / 'receiver.conf'), options)
        conf = cfg.ConfigOpts()
        opts.register_opts(conf)
        opts.register_cli_opts(conf)
        conf(['--config-file', path], project='zmq-receiver-test',
             default_config_files=[])
        return conf, path
    return parse


def config_error(conf):
    with pytest.raises(errors.ConfigError) as e:
        cli.check_values(conf)
    assert e.value.exit_code == errors.EXIT_CONFIG
    return str(e.value)


def test_good_values_pass(config):
    conf, _ = config({'DEFAULT': {'rpc_zmq_port': 9502},
                      'zmq_receiver': {'max_topics': 50}})
    assert cli.check_values(conf) is None


def test_a_bad_value_names_its_group_option_and_file(config):
    conf, path = config({'zmq_receiver': {'max_topics': 'many'}})
    message = config_error(conf)
    assert message.startswith('[zmq_receiver] max_topics in %s: ' % path)
    assert 'many' in message


def test_a_bad_legacy_value_is_in_default(config):
    conf, path = config({'DEFAULT': {'rpc_zmq_port': 'ninety'}})
    assert config_error(conf).startswith(
        '[DEFAULT] rpc_zmq_port in %s: ' % path)


def test_a_value_out_of_its_range_is_refused(config):
    conf, path = config({'zmq_receiver': {'max_frames': 1}})
    message = config_error(conf)
    assert message.startswith('[zmq_receiver] max_frames in %s: ' % path)
    # oslo.config's own reason, not a traceback's.
    assert 'Traceback' not in message


def test_every_group_is_read(config):
    conf, path = config({'matchmaker_redis': {'port': 'six'}})
    assert config_error(conf).startswith(
        '[matchmaker_redis] port in %s: ' % path)


def test_settings_take_the_legacy_and_receiver_options(config, tmp_path,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf, _ = config({
        'DEFAULT': {'rpc_zmq_bind_address': '127.0.0.1',
                    'rpc_zmq_port': 9502, 'rpc_zmq_ipc_dir': 'ipc',
                    'rpc_zmq_topic_backlog': 77, 'rpc_zmq_contexts': 2},
        'zmq_receiver': {'max_message_size': 4096, 'max_frames': 9,
                         'max_topics': 12, 'socket_mode': '0600',
                         'socket_group': '4321', 'shutdown_timeout': 3.5}})
    settings = cli.settings_from(conf)
    assert (settings.bind_address, settings.port) == ('127.0.0.1', 9502)
    # Relative to where the receiver was started, made absolute once.
    assert settings.ipc_dir == str(tmp_path / 'ipc')
    assert (settings.max_message_size, settings.max_frames,
            settings.io_threads, settings.shutdown_timeout) == (
                4096, 9, 2, 3.5)
    limits = settings.limits
    assert (limits.backlog, limits.max_topics) == (77, 12)
    assert (limits.socket_mode, limits.socket_gid) == (0o600, 4321)


def test_settings_without_a_socket_group_keep_the_files_group(config):
    conf, _ = config({})
    limits = cli.settings_from(conf).limits
    assert limits.socket_gid == -1
    assert limits.socket_mode == 0o660
    assert limits.backlog == opts.DEFAULT_TOPIC_BACKLOG


def test_settings_with_an_unknown_group_are_a_config_error(config):
    conf, _ = config({'zmq_receiver': {'socket_group': 'zr-no-such-group'}})
    with pytest.raises(errors.ConfigError) as e:
        cli.settings_from(conf)
    assert 'socket_group = zr-no-such-group: no such group' in str(e.value)


def test_a_mode_that_is_not_octal_is_a_config_error_either_way(config):
    conf, path = config({'zmq_receiver': {'socket_mode': '999'}})
    assert config_error(conf).startswith(
        '[zmq_receiver] socket_mode in %s: ' % path)
    # settings_from, called on its own, says it too (in oslo.config's words).
    with pytest.raises(errors.ConfigError) as e:
        cli.settings_from(conf)
    assert 'socket_mode' in str(e.value) and '999' in str(e.value)
