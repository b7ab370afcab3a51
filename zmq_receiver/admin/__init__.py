"""``oslo-messaging-zmq-admin``: the operator's tool beside the receiver.

It reads the same config files as the receiver (``--config-file``, before
or after the subcommand) to find the IPC directory and the matchmaker, and
asks the running receiver over its control socket.

Subcommands:

``health``
    exit 0 when the receiver answers within ``--timeout`` seconds, 1
    otherwise (for container health checks: no curl needed; :mod:`.stats`).
``stats``
    the live counters and per-topic figures, as a table or ``--json``
    (:mod:`.stats`).
``check``
    a preflight of this host (:mod:`.check`).
``ring validate|show|from-redis|build|learn|diff``
    a ring file (:mod:`.registry`); made from an inventory
    (:mod:`.ring_build`), learnt from the running receivers and compared
    with them (:mod:`.learn`).
``redis show|register|unregister|prune|import-ring``
    the Redis registrations (:mod:`.registry`).
``send``, ``tap``
    put a legacy message on a path, and watch an outlet
    (:mod:`.traffic`).

The entry point, with the exit statuses, is :func:`.cli.main`. The tool
never imports the daemon: it shares with it only the small modules of the
control protocol, the options and the matchmakers (tests/unit/test_imports.py
enforces it).
"""
