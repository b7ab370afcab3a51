"""The exporter's per-topic series, through Collector.collect() in-process.

What a scrape shows of the topics: the busiest ``top_topics`` by name, the
rest summed as ``other``; every series only grows while topics move in and
out of the top N, and the labels sum to the totals. The functional tests
scrape the real endpoint; these drive the ranking with snapshots made here.
"""

from zmq_receiver import exporter

TOPIC_FAMILIES = ('topic_forwarded', 'topic_dropped', 'topic_backlog_messages',
                  'topic_consumers')


def topic(forwarded=0, backlog=0, dropped=0, consumers=0):
    """One topic's entry in a snapshot, as the loop publishes it."""
    return {'forwarded': forwarded, 'backlog': backlog,
            'dropped': {'backlog_full': dropped} if dropped else {},
            'consumers': consumers}


def snapshot(topics):
    """A whole snapshot whose totals are the sums of *topics*."""
    return {
        'received': sum(t['forwarded'] for t in topics.values()),
        'forwarded': sum(t['forwarded'] for t in topics.values()),
        'rejected': {}, 'dropped': {'backlog_full': sum(
            sum(t['dropped'].values()) for t in topics.values())},
        'queued': sum(t['backlog'] for t in topics.values()),
        'queued_bytes': 0, 'outlets': len(topics), 'outlets_created':
        len(topics), 'outlets_reaped': 0, 'topics': topics,
    }


def scrape(collector, topics):
    """Publish a snapshot of *topics* and collect: {family: {label: value}}
    for the per-topic families."""
    collector.state.snapshot = snapshot(topics)
    shown = {}
    for family in collector.collect():
        name = family.name[len(exporter.PREFIX):]
        if name in TOPIC_FAMILIES:
            shown[name] = {s.labels['topic']: s.value
                           for s in family.samples
                           if not s.name.endswith('_created')}
    return shown


def new_collector(top_topics):
    return exporter.Collector(exporter.LoopState(), top_topics)


def test_the_busiest_topics_are_shown_and_the_rest_is_other():
    collector = new_collector(2)
    shown = scrape(collector, {
        'quiet.a': topic(forwarded=1, consumers=1),
        'busy.b': topic(forwarded=50, consumers=2),
        # Ranked by forwarded + backlog: a backlog counts as busy.
        'stuck.c': topic(forwarded=5, backlog=40, dropped=3),
        'quiet.d': topic(forwarded=2, backlog=1, consumers=4),
    })
    assert shown['topic_forwarded'] == {'busy.b': 50, 'stuck.c': 5,
                                        'other': 3}
    assert shown['topic_dropped'] == {'busy.b': 0, 'stuck.c': 3, 'other': 0}
    assert shown['topic_backlog_messages'] == {'busy.b': 0, 'stuck.c': 40,
                                               'other': 1}
    assert shown['topic_consumers'] == {'busy.b': 2, 'stuck.c': 0,
                                        'other': 5}


def test_no_other_label_when_every_topic_is_shown():
    shown = scrape(new_collector(5), {'a.h': topic(forwarded=1),
                                      'b.h': topic(forwarded=2)})
    assert set(shown['topic_forwarded']) == {'a.h', 'b.h'}


def test_a_topic_called_other_joins_the_aggregate():
    # Otherwise one label value would stand for two series.
    shown = scrape(new_collector(5), {'other': topic(forwarded=7),
                                      'real.h': topic(forwarded=1)})
    assert shown['topic_forwarded'] == {'real.h': 1, 'other': 7}


def test_labels_sum_to_the_totals_and_never_go_back_as_the_ranks_change():
    collector = new_collector(1)
    first = scrape(collector, {'a.h': topic(forwarded=10),
                               'b.h': topic(forwarded=4)})
    assert first['topic_forwarded'] == {'a.h': 10, 'other': 4}
    # b overtakes a: a leaves the top 1 and hands its count to other, and
    # b takes along what it counted so far (other still grows).
    second = scrape(collector, {'a.h': topic(forwarded=11),
                                'b.h': topic(forwarded=30)})
    assert sum(second['topic_forwarded'].values()) == 41
    assert second['topic_forwarded']['other'] >= first['topic_forwarded'][
        'other']
    assert second['topic_forwarded'] == {'b.h': 30, 'other': 11}
    # And back: every series still only grows.
    third = scrape(collector, {'a.h': topic(forwarded=100),
                               'b.h': topic(forwarded=31)})
    assert sum(third['topic_forwarded'].values()) == 131
    assert third['topic_forwarded']['other'] >= second['topic_forwarded'][
        'other']


def test_a_topic_reaped_and_made_again_keeps_counting_up():
    collector = new_collector(5)
    scrape(collector, {'a.h': topic(forwarded=10, dropped=2)})
    # A new outlet counts from zero: the label goes on from its total.
    shown = scrape(collector, {'a.h': topic(forwarded=3, dropped=1)})
    assert shown['topic_forwarded']['a.h'] == 13
    assert shown['topic_dropped']['a.h'] == 3


def test_the_same_snapshot_scraped_twice_shows_the_same_series():
    collector = new_collector(1)
    topics = {'a.h': topic(forwarded=10), 'b.h': topic(forwarded=4)}
    collector.state.snapshot = snapshot(topics)
    once = [f.samples for f in collector.collect()
            if f.name.startswith(exporter.PREFIX + 'topic_')]
    again = [f.samples for f in collector.collect()
             if f.name.startswith(exporter.PREFIX + 'topic_')]
    assert once == again


def test_nothing_before_the_first_snapshot():
    assert list(new_collector(5).collect()) == []
