"""./dev bench's command line: the connection-per-message cases and their
sender count, and which (b) each (c) is paired with."""

import pytest

from bench import cases
from bench import run


def test_the_default_run_leaves_out_the_connection_per_message_cases():
    args = run.parse_args([])
    assert args.cases == list(cases.DEFAULT_CASES)
    assert not set(args.cases) & set(cases.CONN_CASES)
    # Every case that ran before is still in the default run.
    for case in ('direct', 'proxy', 'recv1', 'recv1m', 'recv100', 'fanout'):
        assert case in args.cases
    assert args.senders == cases.SENDERS == 8


def test_the_connection_cases_run_when_asked_with_a_sender_count():
    args = run.parse_args(['--cases', 'proxyconn,conn1,conn1acl',
                           '--senders', '16'])
    assert args.cases == ['proxyconn', 'conn1', 'conn1acl']
    assert args.senders == 16


@pytest.mark.parametrize('senders', ['0', '-1', str(run.MAX_SENDERS + 1)])
def test_a_sender_count_out_of_range_is_refused(senders, capsys):
    with pytest.raises(SystemExit) as exc:
        run.parse_args(['--cases', 'conn1', '--senders', senders])
    assert exc.value.code == 2
    assert '--senders takes 1 to %d' % run.MAX_SENDERS in (
        capsys.readouterr().err)


def test_an_unknown_case_is_refused(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(['--cases', 'conn2'])
    assert 'unknown case(s) conn2' in capsys.readouterr().err


def test_the_connection_generator_gets_the_sender_count():
    argv = cases.generator_argv('conn1', 200, 3000, 'tcp://127.0.0.1:1',
                                [cases.TOPIC], senders=4)
    assert argv == ['conn', '-s', 200, '-n', 3000, '-c', 4,
                    'tcp://127.0.0.1:1', cases.TOPIC]
    # The other cases keep their generator and its arguments.
    assert cases.generator_argv('recv1', 200, 10, 'tcp://h:1',
                                [cases.TOPIC]) == [
        'gen', '-s', 200, '-n', 10, 'tcp://h:1', cases.TOPIC]
    assert cases.generator_argv('proxy', 200, 10, 'tcp://h:1', ['t'],
                                rate=1000) == [
        'gen', '-s', 200, '-n', 10, '-r', 1000, 'tcp://h:1', 't']


def test_each_receiver_case_is_paired_with_the_same_traffic_when_it_runs():
    everything = list(cases.CASES)
    assert cases.baseline('conn1', everything) == 'proxyconn'
    assert cases.baseline('conn1acl', everything) == 'proxyconn'
    assert cases.baseline('fanout', everything) == 'proxypub'
    assert cases.baseline('recv1', everything) == 'proxy'
    # Without its own baseline in the run, a case is paired with proxy.
    assert cases.baseline('fanout', ['proxy', 'fanout']) == 'proxy'
    assert cases.baseline('conn1', ['proxy', 'conn1']) == 'proxy'


def test_the_connection_cases_are_sized_by_their_own_prior_rate():
    bench = run.Bench(run.parse_args(['--cases', 'conn1']), None, '/tmp')
    # A pilot of a connection per message: about a second's worth at the
    # prior, not the hundred thousand messages a (c) group prior would give.
    n = bench.n_for('conn1', 200, 1.0)
    assert n == max(run.MIN_N, cases.PRIOR_RATE['conn1'])
    assert bench.n_for('recv1', 200, 1.0) == run.PRIOR_RATE['c']


def test_the_senders_context_is_per_message_unless_asked_per_sender():
    assert run.parse_args([]).conn_context == 'message'
    args = run.parse_args(['--cases', 'conn1', '--conn-context', 'sender'])
    assert args.conn_context == 'sender'
    assert cases.generator_argv('conn1', 200, 10, 'tcp://h:1', ['t'],
                                senders=8, context='sender') == [
        'conn', '-s', 200, '-n', 10, '-c', 8, '-k', 'tcp://h:1', 't']
    with pytest.raises(SystemExit):
        run.parse_args(['--conn-context', 'process'])


def test_steal_is_the_hosts_share_of_the_cpu_time_between_two_readings(
        tmp_path):
    stat = tmp_path / 'stat'
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text('cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3\n')
    before = run.cpu_times(str(stat))
    assert before == {'total': 1000, 'steal': 35}
    stat.write_text('cpu  200 0 100 1500 10 0 5 185 9 0\n')
    after = run.cpu_times(str(stat))
    assert run.steal_percent(before, after) == 100.0 * 150 / 1000
    assert run.steal_percent(after, after) is None
    assert run.steal_percent(None, after) is None
    assert run.cpu_times(str(tmp_path / 'missing')) is None
    # This machine's, read for real.
    assert run.cpu_times()['total'] > 0
