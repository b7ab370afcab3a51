"""The optional C extension; everything else is in pyproject.toml.

zmq_receiver._wire needs only a C compiler and the Python headers: it finds
libzmq at run time in the process (the copy pyzmq loaded), so it neither
links against libzmq nor needs zmq.h. Without a compiler the install still
succeeds and zmq_receiver.wire uses its pure-Python functions, unless
ZMQ_RECEIVER_REQUIRE_WIRE=1 is in the environment: then a build that cannot
compile it fails (the Containerfile sets it, so that an image never ships
the slower loop by accident).
"""

import os

from setuptools import Extension
from setuptools import setup

REQUIRE_WIRE = os.environ.get('ZMQ_RECEIVER_REQUIRE_WIRE', '') == '1'

setup(ext_modules=[
    Extension('zmq_receiver._wire', ['zmq_receiver/_wire.c'],
              libraries=['dl'], extra_compile_args=['-O2'],
              optional=not REQUIRE_WIRE),
])
