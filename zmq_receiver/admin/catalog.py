"""The topic catalog: which OpenStack service consumes and sends which topic.

The data is ``catalog.json`` in this package, read from the public source of
each project at the releases the legacy ZeroMQ driver served (Icehouse to
Liberty). Every topic either cites where it comes from, as ``sources``: one
citation per version read (repo, file, line, 40-hex commit, the releases
that version was judged to belong to, and the evidence for that judgement),
or says plainly that it could not be read: ``"verified": false`` with
``searched``, what was looked for and why it failed. A topic that exists at
only some of its project's releases lists them in its own ``releases``.

A project's topics are keyed by their default name. A topic may carry the
config option that renames it (``compute_topic`` in ``[DEFAULT]``,
``topic`` in ``[conductor]``...): :meth:`Catalog.renames` reads them from
the project's own config file with oslo.config, as the service does, and
:func:`ring_build.build` applies them.
"""

import json
import os
import re

from oslo_config import cfg

from zmq_receiver import errors

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    'catalog.json')
KINDS = frozenset(('bare', 'directed', 'fanout'))
#: The kinds a sender looks up in the ring (directed topics need none).
RING_KINDS = frozenset(('bare', 'fanout'))


class CatalogError(errors.ConfigError):
    """The catalog (or a question put to it) does not fit."""


# Each takes (key, topic, releases) of a project's topic (releases: the
# project's) and returns what is wrong with it, to follow "topic KEY", or
# None.


def _misnamed(key, topic, releases):
    if topic.get('name') != key:
        return 'is named %r' % (topic.get('name'),)
    return None


def _bad_kinds(key, topic, releases):
    if not topic.get('kinds') or not set(topic['kinds']) <= KINDS:
        return 'has kinds %r' % (topic.get('kinds'),)
    return None


#: What a citation of the source must hold.
CITATION_FIELDS = ('repo', 'file', 'line', 'commit', 'releases', 'evidence')


def _citation_problem(citation, releases):
    """What is wrong with one entry of a topic's ``sources``, or None."""
    missing = [f for f in CITATION_FIELDS if not citation.get(f)]
    if missing:
        return 'has a source without %s' % ', '.join(missing)
    if not isinstance(citation['line'], int) or citation['line'] < 1:
        return 'cites line %r' % (citation['line'],)
    if not re.fullmatch('[0-9a-f]{40}', str(citation['commit'])):
        return 'cites commit %r, not 40 hex digits' % (citation['commit'],)
    if not set(citation['releases']) <= releases:
        return 'cites releases %r outside %s' % (citation['releases'],
                                                 sorted(releases))
    return None


def _unsourced(key, topic, releases):
    """A topic cites a source, or says it is unverified and what was
    searched: never neither, never both."""
    sources = topic.get('sources')
    if topic.get('verified') is False:
        if sources:
            return 'is marked unverified but cites sources'
        if not topic.get('searched'):
            return 'is unverified without saying what was searched'
        return None
    if 'verified' in topic:
        return 'has "verified": %r (only false is allowed)' % (
            topic['verified'],)
    if not sources or not isinstance(sources, list):
        return 'cites no source (give "sources", or "verified": false ' \
               'and "searched")'
    for citation in sources:
        problem = _citation_problem(citation, releases)
        if problem:
            return problem
    return None


def _topic_releases(key, topic, releases):
    if not set(topic.get('releases', releases)) <= releases:
        return 'exists at releases %r outside its project\'s %s' % (
            topic['releases'], sorted(releases))
    return None


def _option_without_group(key, topic, releases):
    if topic.get('option') and not topic.get('group'):
        return 'has an option but no group'
    return None


#: In the order their sentences are given.
TOPIC_PROBLEMS = (_misnamed, _bad_kinds, _unsourced, _topic_releases,
                  _option_without_group)


def _topic_problems(where, topics, releases):
    return ['%s: topic %s %s' % (where, key, problem)
            for key, topic in sorted(topics.items())
            for problem in (check(key, topic, releases)
                            for check in TOPIC_PROBLEMS)
            if problem is not None]


def _service_problems(where, topics, services):
    """A sentence for each topic a service uses that *topics* lacks."""
    return ['%s: service %s %s unknown topic %s' % (where, service, field,
                                                     key)
            for service, uses in sorted(services.items())
            for field in ('consumes', 'sends')
            for key in uses.get(field, ())
            if key not in topics]


def _project_problems(name, project, releases):
    where = 'project %s' % name
    problems = []
    if not set(project.get('releases', ())) <= releases:
        problems.append('%s: a release outside %s' % (where, sorted(
            releases)))
    topics = project.get('topics')
    services = project.get('services')
    if not isinstance(topics, dict) or not isinstance(services, dict):
        problems.append('%s: "topics" and "services" must be objects'
                        % where)
        return problems
    return (problems
            + _topic_problems(where, topics, set(project.get('releases', ())))
            + _service_problems(where, topics, services))


def _shape_problems(data):
    """Every way *data* is not a catalog, as sentences (empty: it is)."""
    if not isinstance(data.get('projects'), dict) or not data['projects']:
        return ['no "projects" object']
    releases = set(data.get('releases', ()))
    return [problem
            for name, project in sorted(data['projects'].items())
            for problem in _project_problems(name, project, releases)]


def _register_topic_options(conf, topics):
    """Register on *conf* each option (once) that renames one of
    *topics*."""
    registered = set()
    for topic in topics.values():
        option = topic.get('option')
        if not option or (topic['group'], option) in registered:
            continue
        registered.add((topic['group'], option))
        group = None if topic['group'] == 'DEFAULT' else topic['group']
        opt_class = cfg.MultiStrOpt if topic.get('list') else cfg.StrOpt
        conf.register_opt(opt_class(option), group=group)


def _read_topic_options(topics, project, path):
    """A ConfigOpts with the options of *topics* read from *path*, the
    config file of *project*."""
    conf = cfg.ConfigOpts()
    _register_topic_options(conf, topics)
    try:
        conf(args=[], project=project, default_config_files=[path])
    except cfg.ConfigFilesNotFoundError:
        raise CatalogError(
            '%s config file %s cannot be read: give the path of the '
            'file the %s services read' % (project, path, project))
    except cfg.Error as exc:
        raise CatalogError('%s config file %s: %s' % (project, path, exc))
    return conf


def _configured_names(conf, topic):
    """The names *conf* gives *topic* through its option, or None when it
    has no option or the option is unset."""
    option = topic.get('option')
    if not option:
        return None
    group = topic['group']
    value = conf[option] if group == 'DEFAULT' else conf[group][option]
    if value is None or value == []:
        return None
    if topic.get('list'):
        values = [v.strip() for item in value
                  for v in item.split(',') if v.strip()]
    else:
        values = [value]
    template = topic.get('template', '{}')
    return [template.format(v) for v in values]


class Catalog:
    """The parsed catalog; see the module docstring."""

    def __init__(self, data):
        problems = _shape_problems(data)
        if problems:
            raise CatalogError('The topic catalog is malformed: %s'
                               % '; '.join(problems))
        self.data = data
        self.projects = data['projects']
        self.not_in_ring = data.get('not_in_ring', {})

    def project(self, name, release=None):
        """Project *name*'s entry; CatalogError naming the choices."""
        if name not in self.projects:
            raise CatalogError(
                'Unknown project %r: the catalog knows %s' % (
                    name, ', '.join(sorted(self.projects))))
        project = self.projects[name]
        if release is not None and release not in project['releases']:
            raise CatalogError(
                'The catalog has no %s for release %r: it covers %s' % (
                    name, release, ', '.join(project['releases'])))
        return project

    def service_project(self, service):
        """The project of *service* (``nova-compute``), or None."""
        for name, project in self.projects.items():
            if service in project['services']:
                return name
        return None

    def services(self):
        """Every service name, sorted."""
        return sorted(s for p in self.projects.values()
                      for s in p['services'])

    def renames(self, project, path):
        """{topic key: [names]} from the options in *path*, the project's
        config file, for the topics of *project* that have an option."""
        topics = self.project(project)['topics']
        conf = _read_topic_options(topics, project, path)
        result = {}
        for key, topic in topics.items():
            names = _configured_names(conf, topic)
            if names is not None and names != [key]:
                result[key] = names
        return result

    def consumers(self, topic_key, release=None):
        """[(project, service, topic)] of every service consuming the
        topic keyed *topic_key* in any project (at *release*, if given)."""
        found = []
        for name, project in sorted(self.projects.items()):
            topic = project['topics'].get(topic_key)
            if topic is None or not _exists_at(project, topic, release):
                continue
            for service, uses in sorted(project['services'].items()):
                if topic_key in uses['consumes']:
                    found.append((name, service, topic))
        return found

    def ring_topics(self, project, release=None):
        """The topic keys a ring of *project* must list: those its services
        consume, those they send to, and its ``ring_also``; at *release*,
        if given, less its topics that did not exist then."""
        entry = self.project(project)
        keys = set(entry.get('ring_also', {}))
        for uses in entry['services'].values():
            keys.update(uses['consumes'])
            keys.update(uses['sends'])
        return {key for key in keys
                if key not in entry['topics']
                or _exists_at(entry, entry['topics'][key], release)}

    def unverified(self):
        """[(project, topic key, what was searched)] of every topic whose
        source could not be read, sorted."""
        return sorted((name, key, topic['searched'])
                      for name, project in self.projects.items()
                      for key, topic in project['topics'].items()
                      if topic.get('verified') is False)


def _exists_at(project, topic, release):
    """Whether *topic* of *project* exists at *release* (None: any)."""
    if release is None:
        return True
    return release in topic.get('releases', project['releases'])


def load(path=PATH):
    """The :class:`Catalog` at *path* (the package's by default)."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise CatalogError('The topic catalog %s cannot be read: %s; '
                           'reinstall the package' % (path, exc))
    return Catalog(data)
