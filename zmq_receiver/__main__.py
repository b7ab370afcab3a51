"""``python -m zmq_receiver``: the same as ``oslo-messaging-zmq-receiver``."""

import sys

from zmq_receiver import cli

if __name__ == '__main__':
    sys.exit(cli.main())
