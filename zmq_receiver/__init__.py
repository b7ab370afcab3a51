"""A standalone receiver for the legacy oslo.messaging ZeroMQ RPC driver.

It binds the TCP port senders push to and forwards every message, unchanged,
to the per-topic IPC socket that the local services connect to.
"""

__version__ = '0.1.0'
