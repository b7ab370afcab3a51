"""``ring build``: write the ring files an inventory implies.

For each project asked for, the ring lists, for every topic its services
consume or send to (from :mod:`.catalog`), the hosts of the
inventory that run a service consuming it, whatever project that service
belongs to: nova's ring lists ``notifications-info`` on the hosts of
ceilometer's notification agent. Topics that only go directed
(``topic.host``) need no entry, and are left out unless the catalog says
the community ring had them (``ring_also``).
"""

import os
import sys

from zmq_receiver.admin import catalog as catalog_mod
from zmq_receiver import errors
from zmq_receiver.admin import inventory as inventory_mod
from zmq_receiver.matchmaker import ring

#: ``--project all``: one ring of every project.
ALL = 'all'
FILE_NAME = '%s_matchmaker_ring.json'
#: The ``ring`` actions of this module.
ACTIONS = ('build',)


def add_parser(actions):
    build = actions.add_parser(
        'build', help='write the ring files an inventory of hosts implies',
        description='Write the ring of each project from an inventory: an '
                    'INI or YAML file of host -> services, or an Ansible '
                    'inventory (INI or YAML) whose groups are named after '
                    'services or mapped with --group.')
    build.add_argument('inventory', help='the inventory file')
    build.add_argument('--project', action='append', metavar='NAME',
                       help='a project (repeatable, or comma-separated), or '
                            '"all" for one ring of every project; default: '
                            'every project with a service in the inventory')
    build.add_argument('--release', default='juno',
                       help='the OpenStack release (default: juno)')
    build.add_argument('--group', action='append', default=[],
                       metavar='GROUP=SERVICE[,SERVICE]',
                       help='an Ansible group stands for these services')
    build.add_argument('--project-config', action='append', default=[],
                       metavar='PROJECT=FILE',
                       help='the project\'s config file (nova.conf), whose '
                            'topic options (compute_topic, ...) rename '
                            'topics')
    out = build.add_mutually_exclusive_group()
    out.add_argument('--output', '-o', metavar='FILE',
                     help='write FILE (one project, or all)')
    out.add_argument('--output-dir', metavar='DIR',
                     help='write DIR/<project>_matchmaker_ring.json')


def _pairs(values, option):
    result = {}
    for value in values:
        key, sep, rest = value.partition('=')
        if not sep or not key or not rest:
            raise errors.ConfigError('%s %r: write NAME=VALUE' % (
                option, value))
        result[key.strip()] = rest.strip()
    return result


def _merge(topics, name, hosts):
    """Add *hosts* to topic *name* of *topics*, each once, sorted."""
    topics[name] = sorted(set(topics.get(name, [])) | set(hosts))


def _ring_services(consumers, listed_anyway):
    """The services of *consumers* that a ring must list for the topic:
    those that consume it other than directed, or all when
    *listed_anyway*."""
    return {service for _, service, topic in consumers
            if listed_anyway or set(topic['kinds']) & catalog_mod.RING_KINDS}


def _unroutable(consumers):
    """Why the catalog says no ring can route the topic, or None."""
    for _, _, topic in consumers:
        if topic.get('unroutable'):
            return topic['unroutable']
    return None


def _topic_hosts(catalog, key, listed_anyway, consumers, placements):
    """(hosts, note) of topic *key* with *consumers*: the hosts that run a
    service consuming it, or none and why it is left out (None when it
    needs no entry: directed only, and not *listed_anyway*)."""
    services = _ring_services(consumers, listed_anyway)
    if not services:
        return [], None
    unroutable = _unroutable(consumers)
    if unroutable:
        return [], '%s left out: %s' % (key, unroutable)
    hosts = sorted(h for h, running in placements.items()
                   if running & services)
    if not hosts:
        return [], '%s left out: no host of the inventory runs %s' % (
            key, ' or '.join(sorted(services)))
    return hosts, None


def build(catalog, project, placements, renames=None, release=None):
    """({topic: [hosts]}, notes) of the ring of *project* for
    *placements* ({host: set of services}); *renames* is
    {project: {topic key: [names]}}; *release*, if given, leaves out the
    topics the catalog says did not exist then."""
    renames = renames or {}
    entry = catalog.project(project)
    also = entry.get('ring_also', {})
    topics, notes = {}, []
    for key in sorted(catalog.ring_topics(project, release)):
        if key in catalog.not_in_ring:
            continue
        consumers = catalog.consumers(key, release)
        hosts, note = _topic_hosts(catalog, key, key in also, consumers,
                                   placements)
        if note is not None:
            notes.append(note)
        if not hosts:
            continue
        # The sender's name for it: its own project's option first.
        owner = project if key in entry['topics'] else consumers[0][0]
        for name in renames.get(owner, {}).get(key, [key]):
            _merge(topics, name, hosts)
    return topics, notes


def _projects(catalog, command, placements, release):
    asked = [p.strip() for value in (command.project or ())
             for p in value.split(',') if p.strip()]
    if not asked:
        asked = sorted({catalog.service_project(s)
                        for services in placements.values()
                        for s in services})
    for name in asked:
        if name != ALL:
            catalog.project(name, release)
    return asked


def _placements(catalog, command, err):
    """{host: set of services} of the inventory; a note for its groups
    that name no service."""
    groups = {g: [s.strip() for s in v.split(',') if s.strip()]
              for g, v in _pairs(command.group, '--group').items()}
    inventory = inventory_mod.load(command.inventory)
    placements, ignored = inventory.placements(catalog.services(), groups)
    if ignored:
        print('note: groups that name no service (map them with --group '
              'GROUP=SERVICE): %s' % ', '.join(sorted(ignored)), file=err)
    if not placements:
        raise errors.ConfigError(
            'Inventory %s places no service of the catalog on any host: name '
            'services (nova-compute, ...) or map groups with --group' %
            command.inventory)
    return placements


def _members(catalog, name, release):
    """The projects whose topics ring *name* lists: every project of
    *release* for ``all``, else the one."""
    if name != ALL:
        return [name]
    return [p for p in sorted(catalog.projects)
            if release in catalog.projects[p]['releases']]


def _ring(catalog, name, command, placements, renames, err):
    """{topic: [hosts]} of ring *name*, its notes printed on *err*."""
    merged = {}
    for member in _members(catalog, name, command.release):
        topics, notes = build(catalog, member, placements, renames,
                              command.release)
        for note in notes:
            print('note: %s: %s' % (member, note), file=err)
        for topic, hosts in topics.items():
            _merge(merged, topic, hosts)
    return merged


def _write(name, topics, command, out, err):
    """Validate ring *name* and write it: to its file, or to *out*."""
    # Validated as ``ring validate`` does: what is written must load.
    checked = ring.parse(ring.dumps(topics), '<%s ring>' % name)
    for warning in checked.warnings:
        print('warning: %s: %s' % (name, warning), file=err)
    if command.output_dir:
        path = os.path.join(command.output_dir, FILE_NAME % name)
    else:
        path = command.output
    if not path:
        out.write(ring.dumps(topics))
        return
    ring.write(path, topics)
    print('wrote %s: %d topics, %d hosts' % (
        path, len(topics), len(checked.hosts())), file=err)


def run(conf, command, out=sys.stdout, err=sys.stderr):
    """The ``ring build`` subcommand; the exit status."""
    catalog = catalog_mod.load()
    placements = _placements(catalog, command, err)
    projects = _projects(catalog, command, placements, command.release)
    renames = {name: catalog.renames(name, path) for name, path in _pairs(
        command.project_config, '--project-config').items()}
    rings = {name: _ring(catalog, name, command, placements, renames, err)
             for name in projects}
    if len(rings) > 1 and not command.output_dir:
        raise errors.ConfigError(
            'Several projects (%s): give --output-dir DIR to write one ring '
            'file each, or --project all for one ring' % ', '.join(rings))
    for name, topics in rings.items():
        _write(name, topics, command, out, err)
    return 0
