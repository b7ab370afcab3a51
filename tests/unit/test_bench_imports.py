"""bench.imports: the memory each import costs at start (issue #17,
"Memory"), measured in a fresh interpreter, step by step."""

import importlib.util
import json
import subprocess
import sys

from bench import imports
from tests import support


def test_every_step_is_measured_in_a_fresh_interpreter():
    result = subprocess.run(
        [sys.executable, '-m', 'bench.imports', '--json'],
        capture_output=True, text=True, timeout=support.TIMEOUT,
        cwd=support.REPO, env=support.clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    steps = out['steps']
    assert [row[0] for row in steps] == [s[0] for s in imports.STEPS]
    assert [row[0] for row in out['optional']] == [
        s[0] for s in imports.OPTIONAL]
    # oslo.config and oslo.log with what they pull in are the bulk of it:
    # a step that measured nothing would be a broken measurement.
    assert sum(row[2] for row in steps) > 8 * 1024
    assert all(row[2] > 0 for row in out['optional'])


def test_the_steps_name_modules_that_exist():
    for _, modules in imports.STEPS + imports.OPTIONAL:
        for name in modules:
            assert importlib.util.find_spec(name.split('.')[0]), name
