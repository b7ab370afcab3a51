"""``python -m zmq_receiver.admin``: the same as
``oslo-messaging-zmq-admin``."""

import sys

from zmq_receiver.admin import cli

if __name__ == '__main__':
    sys.exit(cli.main())
