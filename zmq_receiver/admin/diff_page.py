"""``ring diff --html``: the topic x host matrix as one self-contained page.

No external file, font or script: the page is written once and opened
anywhere (a browser, a CI artifact, a monitoring system's link). Each cell
carries its state as a class and a ``data-state`` attribute; a short inline
script counts them into the summary and hides the agreeing rows on request.
"""

import html
import os

from zmq_receiver.matchmaker import ring

#: state -> (cell text, colour).
STATES = {
    'ok': ('consumer', '#c8e6c9'),
    'no-consumer': ('listed, no consumer', '#ffcdd2'),
    'unlisted': ('consumer, not listed', '#ffe0b2'),
    'no-answer': ('no answer', '#cfd8dc'),
}

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #999; padding: 0.3em 0.6em; font-size: 90%; }
th.host.down { background: #cfd8dc; }
td.empty { background: #fafafa; }
STATES
.agree-hidden tr.agree { display: none; }
"""

_SCRIPT = """
(function () {
  var cells = document.querySelectorAll('td[data-state]');
  var counts = {};
  cells.forEach(function (c) {
    var s = c.getAttribute('data-state');
    counts[s] = (counts[s] || 0) + 1;
  });
  var down = document.querySelectorAll('th.host.down').length;
  var bad = (counts['no-consumer'] || 0) + (counts['unlisted'] || 0) + down;
  var summary = document.getElementById('summary');
  summary.setAttribute('data-disagreements', String(bad));
  summary.textContent = bad ? bad + ' disagreements: ' +
      (counts['no-consumer'] || 0) + ' listed without a consumer, ' +
      (counts['unlisted'] || 0) + ' consumers not listed, ' +
      down + ' hosts did not answer'
    : 'ring and receivers agree';
  document.getElementById('only-bad').addEventListener('change', function (e) {
    document.body.classList.toggle('agree-hidden', e.target.checked);
  });
})();
"""


def render(cells, failed, where):
    """The page (text) for :func:`learn.compare`'s *cells*, the hosts
    that did not answer (*failed*: {host: reason}) and *where* the ring
    came from."""
    esc = html.escape
    topics = sorted({t for t, _ in cells})
    hosts = sorted({h for _, h in cells} | set(failed))
    style = _STYLE.replace('STATES', '\n'.join(
        'td.state-%s { background: %s; }' % (state, colour)
        for state, (_, colour) in sorted(STATES.items())))
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           '<title>ring diff: %s</title>' % esc(where),
           '<style>%s</style></head><body>' % style,
           '<h1>Matchmaker data: %s vs the receivers</h1>' % esc(where),
           '<p id="summary"></p>',
           '<label><input type="checkbox" id="only-bad"> only the topics '
           'where they disagree</label>',
           '<table id="matrix"><thead><tr><th>topic</th>']
    for host in hosts:
        down = host in failed
        out.append('<th class="host%s" data-host="%s"%s>%s</th>' % (
            ' down' if down else '', esc(host, quote=True),
            ' title="%s"' % esc(failed[host], quote=True) if down else '',
            esc(host)))
    out.append('</tr></thead><tbody>')
    for topic in topics:
        states = [cells.get((topic, h)) for h in hosts]
        agree = all(s in (None, 'ok') for s in states)
        out.append('<tr class="%s" data-topic="%s"><th>%s</th>' % (
            'agree' if agree else 'disagree', esc(topic, quote=True),
            esc(topic)))
        for host, state in zip(hosts, states):
            if state is None:
                out.append('<td class="empty"></td>')
                continue
            out.append('<td class="state-%s" data-state="%s" data-host="%s">'
                       '%s</td>' % (state, state, esc(host, quote=True),
                                    esc(STATES[state][0])))
        out.append('</tr>')
    out.append('</tbody></table>')
    if failed:
        out.append('<h2>Hosts that did not answer</h2><ul id="down">')
        for host, reason in sorted(failed.items()):
            out.append('<li data-host="%s"><b>%s</b>: %s</li>' % (
                esc(host, quote=True), esc(host), esc(reason)))
        out.append('</ul>')
    out.append('<script>%s</script></body></html>' % _SCRIPT)
    return '\n'.join(out) + '\n'


def write(path, cells, failed, where):
    """Write the page at *path*, atomically (as ring files are)."""
    ring.write_text(path, render(cells, failed, where))
    return os.path.abspath(path)
