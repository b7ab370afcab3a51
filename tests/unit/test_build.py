"""setup.py: the compiled loop is optional, unless the build requires it.

Built for real with setuptools into a temporary directory, with a compiler
that always fails (CC=false) standing for a base image without gcc or the
Python headers.
"""

import subprocess
import sys

import pytest

from tests import support


def build_ext(tmp_path, **env):
    return subprocess.run(
        [sys.executable, 'setup.py', '-q', 'build_ext',
         '--build-lib', str(tmp_path / 'lib'),
         '--build-temp', str(tmp_path / 'temp')],
        cwd=support.REPO, capture_output=True, text=True,
        timeout=support.TIMEOUT * 6, env=support.clean_env(env, CC='false'))


# A setup.py build in a subprocess: seconds each, out of ./dev check.
@pytest.mark.slow
def test_without_a_compiler_the_build_succeeds_without_the_extension(
        tmp_path):
    result = build_ext(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(tmp_path.glob('lib/zmq_receiver/_wire*'))


@pytest.mark.slow
def test_a_build_that_requires_the_extension_fails_without_a_compiler(
        tmp_path):
    result = build_ext(tmp_path, ZMQ_RECEIVER_REQUIRE_WIRE='1')
    assert result.returncode != 0, result.stdout + result.stderr
    assert 'error: command' in result.stderr, result.stderr
    assert not list(tmp_path.glob('lib/zmq_receiver/_wire*'))
