"""Compile the C endpoints against pyzmq's own libzmq, or fall back.

The generator and consumers must be much faster than what they measure; a
Python endpoint tops out near the receiver's own rate. So ``c/zbench.c`` is
compiled at bench time with gcc and linked against the very libzmq that
pyzmq loads (same version, same build options as the receiver uses), found
inside the installed pyzmq. When that fails, the Python endpoints of
:mod:`bench.pyendpoints` speak the same protocol, and the report says so.
"""

import glob
import os
import shutil
import subprocess
import sys

import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, 'c', 'zbench.c')


class Endpoints:
    """How to start the generator, consumers and proxy."""

    def __init__(self, kind, prefix, note):
        #: 'C' or 'Python'.
        self.kind = kind
        self._prefix = prefix
        #: One line saying what was built, or why not.
        self.note = note

    def argv(self, role, *args):
        return self._prefix + [role] + [str(a) for a in args]


def find_libzmq():
    """The libzmq shared library that pyzmq loads, or None.

    Wheels keep it in ``site-packages/pyzmq.libs/`` (auditwheel) or inside
    the package; a source build may link the system one instead.
    """
    package = os.path.dirname(zmq.__file__)
    patterns = [os.path.join(os.path.dirname(package), 'pyzmq.libs',
                             'libzmq*.so*'),
                os.path.join(package, 'libzmq*.so*'),
                os.path.join(package, '.libs', 'libzmq*.so*')]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def build(workdir, python=False):
    """Compile zbench into *workdir*; the Endpoints to use either way.

    *python* asks for the Python endpoints without trying to compile.
    """
    fallback = Endpoints('Python', [sys.executable, '-m', 'bench.pyendpoints'],
                         None)
    if python:
        fallback.note = 'Python endpoints, as asked (--python-endpoints)'
        return fallback
    cc = shutil.which(os.environ.get('CC', 'gcc')) or shutil.which('cc')
    lib = find_libzmq()
    if cc is None:
        fallback.note = 'no C compiler: Python endpoints (slower)'
        return fallback
    if lib is None:
        fallback.note = ('no libzmq inside pyzmq %s: Python endpoints '
                         '(slower)' % zmq.pyzmq_version())
        return fallback
    exe = os.path.join(workdir, 'zbench')
    libdir, libname = os.path.split(lib)
    # zmq.h is used when pyzmq (or the system) has it; wheels do not ship
    # it, and zbench.c then uses its own copy of the few declarations.
    includes = ['-I' + d for d in zmq.get_includes()]
    cmd = [cc, '-O2', '-Wall', '-pthread', '-o', exe, SOURCE] + includes + [
        '-L' + libdir, '-l:' + libname, '-Wl,-rpath,' + libdir]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        fallback.note = ('compiling zbench failed: Python endpoints (slower)'
                         '\n%s\n%s' % (' '.join(cmd), proc.stdout))
        return fallback
    return Endpoints('C', [exe], 'C endpoints (gcc, %s, libzmq %s)' % (
        libname, zmq.zmq_version()))
