"""access.NetworkCheck: the allow-list asked about each legacy connection.

Its verdicts are kept per address (a legacy sender connects once a
message): what it answers, counts and logs must not change with the cache.
"""

import logging

from zmq_receiver import access
from zmq_receiver import metrics
from zmq_receiver import ratelimit


def _check(networks, interval=0.0):
    counters = metrics.Counters()
    warn = ratelimit.RateLimitedLog(logging.getLogger('test'), interval)
    return access.NetworkCheck(access.parse_networks(networks), counters,
                               warn), counters


def test_an_allowed_peer_is_admitted_each_time_and_nothing_counted():
    check, counters = _check(['127.0.0.0/8', '2001:db8::/32'])
    for _ in range(3):
        assert check.admits('127.0.0.1')
        assert check.admits('::ffff:127.0.0.9')
        assert check.admits('2001:db8::7')
    assert not counters.denied


def test_each_refusal_is_counted_and_logged_also_when_the_verdict_is_kept(
        caplog):
    check, counters = _check(['192.0.2.0/24'])
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert not check.admits('::ffff:198.51.100.7')
    assert counters.denied[access.NETWORK_NOT_ALLOWED] == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    # The IPv4 address, not the dual-stack socket's mapped form.
    assert all(line.startswith('Refused a connection from 198.51.100.7: ')
               for line in lines), lines


def test_a_peer_that_is_no_address_is_refused_under_its_own_text(caplog):
    check, counters = _check(['192.0.2.0/24'])
    with caplog.at_level(logging.WARNING):
        assert not check.admits('not-an-address')
    assert counters.denied[access.NETWORK_NOT_ALLOWED] == 1
    assert 'Refused a connection from not-an-address:' in caplog.text


def test_the_kept_verdicts_are_bounded():
    check, _ = _check(['10.0.0.0/8'])
    for n in range(access.VERDICTS_KEPT + 100):
        assert check.admits('10.%d.%d.1' % (n // 256 % 256, n % 256))
    assert check._verdict.cache_info().currsize == access.VERDICTS_KEPT
