"""The core stays easy to see: the size and complexity targets of the
architecture issue (#16), held by a test so that a change that breaks them
says so where it is made.

Cyclomatic complexity as radon computes it; 10 is where radon's rank B
ends. Sizes in lines of the class body, docstrings and comments included.
"""

import ast
import pathlib

import pytest
from radon import complexity

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / 'zmq_receiver'

#: The loop, the startup and what they are made of.
CORE = ('cli', 'startup', 'loop', 'receiver', 'reading', 'inputs',
        'stopping', 'control_server', 'outlets', 'outlet', 'delivery',
        'ipcdir', 'control', 'endpoints')
MAX_COMPLEXITY = 10
#: Classes that once did everything, and their ceiling.
MAX_LINES = {('receiver', 'Receiver'): 300, ('outlets', 'Outlets'): 300}


def too_complex(source, limit=MAX_COMPLEXITY):
    """'name (complexity)' of each function or method above *limit*."""
    return ['%s (%d)' % (block.fullname, block.complexity)
            for block in complexity.cc_visit(source)
            if block.complexity > limit]


def class_lines(source, name):
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node.end_lineno - node.lineno + 1
    raise LookupError(name)


@pytest.mark.parametrize('module', CORE)
def test_no_core_function_is_above_complexity_10(module):
    source = (PACKAGE / (module + '.py')).read_text()
    assert too_complex(source) == []


@pytest.mark.parametrize('module,name', sorted(MAX_LINES))
def test_the_big_classes_stay_small(module, name):
    source = (PACKAGE / (module + '.py')).read_text()
    assert class_lines(source, name) < MAX_LINES[module, name]


def test_the_checks_can_fail():
    branches = '\n'.join('    if x == %d:\n        return %d' % (i, i)
                         for i in range(12))
    assert too_complex('def f(x):\n' + branches + '\n') == ['f (13)']
    assert class_lines('class C:\n' + '    x = 1\n' * 400, 'C') == 401
