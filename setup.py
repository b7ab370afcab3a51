"""The optional C extension; everything else is in pyproject.toml.

zmq_receiver._wire needs only a C compiler and the Python headers: it finds
libzmq at run time in the process (the copy pyzmq loaded), so it neither
links against libzmq nor needs zmq.h. Without a compiler the install still
succeeds and zmq_receiver.wire uses its pure-Python functions.
"""

from setuptools import Extension
from setuptools import setup

setup(ext_modules=[
    Extension('zmq_receiver._wire', ['zmq_receiver/_wire.c'],
              libraries=['dl'], extra_compile_args=['-O2'], optional=True),
])
