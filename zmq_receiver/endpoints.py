"""ZeroMQ endpoints from the options, shared by the receiver and the admin
tool."""

import ipaddress


def tcp_endpoint(address, port):
    """The ZeroMQ endpoint and IPv6 flag for ``rpc_zmq_bind_address``.

    ``*`` binds every IPv4 and IPv6 address; an IPv6 literal is bracketed;
    an IPv4 literal or interface name is used as it is, with IPv6 off so
    that libzmq picks an interface's IPv4 address.
    """
    address = address.strip()
    if address == '*':
        return 'tcp://*:%d' % port, True
    bare = address[1:-1] if address.startswith('[') else address
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return 'tcp://%s:%d' % (address, port), False
    if ip.version == 6:
        return 'tcp://[%s]:%d' % (bare, port), True
    return 'tcp://%s:%d' % (bare, port), False
