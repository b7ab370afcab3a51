"""The optional parts are loaded only when their options ask for them.

prometheus_client (with the HTTP server under the exporter), redis-py and
the matchmaker agent cost memory that a receiver forwarding with metrics
and the agent off never uses (issue #17, "Memory"). Whether a module was
loaded is only visible from inside the process, and this one has imported
everything already, so each case runs the real startup steps, from
``parse`` to ``build_receiver`` (everything but the bind), in a fresh
interpreter on the development config, and reports ``sys.modules``.
"""

import json
import os
import subprocess
import sys

import pytest

from tests import support

DEV_CONFIG = os.path.join(support.REPO, 'etc', 'zmq-receiver-dev.conf')

#: The optional modules, by what loads them.
OPTIONAL = ('prometheus_client', 'redis', 'zmq_receiver.exporter',
            'zmq_receiver.matchmaker.agent', 'zmq_receiver.matchmaker.redis')

#: Run in the child: the startup steps up to build_receiver, then the
#: optional modules found in sys.modules, as JSON on stdout.
CHILD = '''
import json, sys
from zmq_receiver import startup
boot = startup.Startup(sys.argv[1:])
steps = startup.BEFORE_LOCK + startup.UNDER_LOCK
try:
    for step in steps[:steps.index(startup.build_receiver) + 1]:
        step(boot)
finally:
    if boot.lock is not None:
        boot.lock.release()
print(json.dumps(sorted(m for m in %r if m in sys.modules)))
''' % (OPTIONAL,)


def loaded_after_startup(tmp_path, options):
    """The modules of OPTIONAL loaded by the startup up to build_receiver,
    on the development config with *options* ({section: {name: value}})
    on top of it."""
    ipc_dir = tmp_path / 'ipc'
    options = dict(options)
    options['DEFAULT'] = dict(options.get('DEFAULT', {}),
                              rpc_zmq_ipc_dir=ipc_dir, rpc_zmq_port=0)
    extra = support.write_config(str(tmp_path / 'extra.conf'), options)
    result = subprocess.run(
        [sys.executable, '-c', CHILD, '--config-file', DEV_CONFIG,
         '--config-file', extra],
        capture_output=True, text=True, timeout=support.TIMEOUT,
        cwd=support.REPO, env=support.clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_the_dev_config_loads_no_optional_module(tmp_path):
    assert loaded_after_startup(tmp_path, {}) == set()


def test_metrics_load_the_exporter_and_prometheus_client(tmp_path):
    loaded = loaded_after_startup(
        tmp_path, {'zmq_receiver': {'metrics_port': 0}})
    assert loaded == {'prometheus_client', 'zmq_receiver.exporter'}


def test_the_ring_agent_loads_the_agent_but_not_redis(tmp_path):
    ring = tmp_path / 'ring.json'
    ring.write_text(json.dumps({'compute': ['localhost']}))
    loaded = loaded_after_startup(tmp_path, {
        'DEFAULT': {'rpc_zmq_matchmaker': 'ring'},
        'matchmaker_ring': {'ringfile': ring},
        'zmq_receiver': {'matchmaker_agent': 'true'}})
    assert loaded == {'zmq_receiver.matchmaker.agent'}


@pytest.mark.parametrize('agent', ['false', 'true'])
def test_redis_is_loaded_only_for_the_redis_agent(tmp_path, agent):
    # Nothing listens on the port: Redis is contacted only from the
    # agent's thread, which starts after the bind.
    loaded = loaded_after_startup(tmp_path, {
        'DEFAULT': {'rpc_zmq_matchmaker': 'redis',
                    'matchmaker_heartbeat_freq': 1,
                    'matchmaker_heartbeat_ttl': 3},
        'matchmaker_redis': {'host': '127.0.0.1',
                             'port': support.free_port()},
        'zmq_receiver': {'matchmaker_agent': agent}})
    if agent == 'true':
        assert loaded == {'redis', 'zmq_receiver.matchmaker.agent',
                          'zmq_receiver.matchmaker.redis'}
    else:
        assert loaded == set()
