"""The option declarations, their documentation and the committed sample.

The sample config is what operators read; it must be what the generator
makes from the code today, and the generator must find the options through
the installed ``oslo.config.opts`` entry point.
"""

import difflib
import importlib.metadata
import os
import socket
import subprocess
import sys

from oslo_config import cfg
import pytest

from tests import support
from zmq_receiver import opts

SAMPLE = os.path.join(support.REPO, 'etc', 'zmq-receiver.conf.sample')
GENERATOR_CONFIG = os.path.join('etc', 'oslo-config-generator',
                                'zmq-receiver.conf')


def listed():
    """{(group, name): opt} from list_opts()."""
    found = {}
    for group, group_opts in opts.list_opts():
        for opt in group_opts:
            assert (group, opt.name) not in found, 'listed twice: %s' % (
                opt.name,)
            found[(group, opt.name)] = opt
    return found


def registered(register):
    """The (group, name) pairs *register* adds to a fresh ConfigOpts."""
    def names(conf):
        pairs = set()
        for name in conf:
            if isinstance(conf[name], cfg.ConfigOpts.GroupAttr):
                pairs.update((name, opt) for opt in conf[name])
            else:
                pairs.add((None, name))
        return pairs

    # oslo.config registers a few options of its own on every ConfigOpts.
    before = names(cfg.ConfigOpts())
    conf = cfg.ConfigOpts()
    register(conf)
    return names(conf) - before


def test_sample_config_is_up_to_date(tmp_path):
    out = tmp_path / 'zmq-receiver.conf.sample'
    proc = subprocess.run(
        [sys.executable, '-m', 'oslo_config.generator',
         '--config-file', GENERATOR_CONFIG, '--output-file', str(out)],
        cwd=support.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=60, env=support.clean_env())
    assert proc.returncode == 0, proc.stdout
    generated = out.read_text()
    with open(SAMPLE) as f:
        committed = f.read()
    if generated != committed:
        diff = ''.join(difflib.unified_diff(
            committed.splitlines(True), generated.splitlines(True),
            'etc/zmq-receiver.conf.sample (committed)', '(generated now)'))
        pytest.fail('etc/zmq-receiver.conf.sample is out of date: run '
                    './dev sample-config\n' + diff)


def test_sample_config_documents_every_option():
    # The equality above holds just as well for a generator that finds too
    # little (a stale entry point, a group left out of list_opts) once the
    # sample is regenerated: check that the sample names every option.
    with open(SAMPLE) as f:
        sample = f.read()
    assert '[zmq_receiver]' in sample
    for group, name in listed():
        assert '\n#%s = ' % name in sample or '\n#%s =\n' % name in sample, (
            '%s is missing from the sample: run ./dev sample-config' % name)


def test_sample_does_not_leak_the_build_host_name():
    # rpc_zmq_host defaults to the host name: the sample shows a stand-in.
    with open(SAMPLE) as f:
        sample = f.read()
    assert '#rpc_zmq_host = localhost\n' in sample
    hostname = socket.gethostname()
    if hostname != 'localhost':
        assert '= %s\n' % hostname not in sample


def test_list_opts_covers_every_registered_option():
    everything = set(listed())
    assert registered(opts.register_opts) <= everything
    assert registered(opts.register_cli_opts) <= everything
    # ...and lists nothing that the receiver does not register.
    assert everything == (registered(opts.register_opts) |
                          registered(opts.register_cli_opts))


def test_list_opts_groups():
    groups = dict(opts.list_opts())
    assert set(groups) == {None, opts.GROUP, opts.RING_GROUP,
                           opts.REDIS_GROUP}
    # The legacy names stay in [DEFAULT], where services' config files
    # have them.
    legacy = {opt.name for opt in groups[None]}
    assert {'rpc_zmq_bind_address', 'rpc_zmq_port', 'rpc_zmq_ipc_dir',
            'rpc_zmq_host', 'rpc_zmq_contexts',
            'rpc_zmq_topic_backlog'} <= legacy


def test_legacy_defaults_match_the_protocol():
    # PROTOCOL.md section 5; 9500 is the old guide's mistake.
    defaults = {opt.name: opt.default for opt in opts.legacy_opts}
    assert defaults['rpc_zmq_bind_address'] == '*'
    assert defaults['rpc_zmq_port'] == 9501
    assert defaults['rpc_zmq_ipc_dir'] == '/var/run/openstack'
    assert defaults['rpc_zmq_contexts'] == 1


@pytest.mark.parametrize('key', sorted(
    listed(), key=lambda k: (k[0] or '', k[1])),
    ids=lambda k: '%s.%s' % (k[0] or 'DEFAULT', k[1]))
def test_every_option_has_help(key):
    help_text = listed()[key].help
    assert help_text and help_text.strip(), '%s has no help text' % (key,)
    # The generator prints the help as the option's comment: a sentence.
    assert len(help_text.split()) >= 4, help_text


def test_entry_point_resolves_to_list_opts():
    found = [ep for ep in importlib.metadata.entry_points(
        group='oslo.config.opts') if ep.name == 'zmq_receiver']
    assert len(found) == 1, found
    assert found[0].value == 'zmq_receiver.opts:list_opts'
    assert found[0].load() is opts.list_opts


def test_register_opts_twice_on_one_conf_is_harmless():
    # A test or a reload may register again; oslo.config must accept it.
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    opts.register_opts(conf)
    opts.register_cli_opts(conf)
    conf([], default_config_files=[])
    assert conf.rpc_zmq_port == 9501
