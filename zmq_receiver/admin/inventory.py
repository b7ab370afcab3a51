"""Inventories: which hosts run which services, in the forms operators have.

Four forms, told apart by content (YAML by the file name's ``.yaml`` or
``.yml``):

* INI, one section per host with a ``services`` list::

      [controller1]
      services = nova-conductor, nova-scheduler

* YAML, host to list of services: ``{controller1: [nova-conductor]}``;
* an Ansible INI inventory: ``[group]`` sections of host lines (the first
  word of the line; ``[group:children]`` lists groups, ``[group:vars]`` is
  ignored);
* an Ansible YAML inventory (``all:`` / groups with ``hosts:`` and
  ``children:``).

An Ansible inventory gives groups, not services: a group whose name is a
service of the catalog (``nova-compute``, or ``nova_compute``) stands for
it, and ``group_services`` maps any other group (``compute=nova-compute``).
A host variable ``rpc_zmq_host`` gives the name the ring must use for a
host, when it is not the inventory name.
"""

import re

import yaml

from zmq_receiver import errors

_RANGE = re.compile(r'\[[^\]]*:[^\]]*\]')


class InventoryError(errors.ConfigError):
    """The inventory cannot be read or used."""


class Inventory:
    """:attr:`hosts`: {host: set of service or group names};
    :attr:`ansible`: whether the names are Ansible groups."""

    def __init__(self, hosts, ansible):
        self.hosts = hosts
        self.ansible = ansible

    def placements(self, known_services, group_services=None):
        """({host: set of services}, ignored group names) for the services
        in *known_services*, through *group_services* ({group: [service]})
        and the groups named after a service."""
        group_services = group_services or {}
        known = set(known_services)
        placed, ignored = {}, set()
        for host, names in self.hosts.items():
            services = set()
            for name in names:
                normal = name.lower().replace('_', '-')
                if name in group_services:
                    services.update(group_services[name])
                elif normal in known:
                    services.add(normal)
                elif self.ansible:
                    ignored.add(name)
                else:
                    raise InventoryError(
                        'Host %s runs service %r, which the catalog does not '
                        'know: use one of %s' % (host, name,
                                                 ', '.join(sorted(known))))
            unknown = services - known
            if unknown:
                raise InventoryError(
                    'Group mapping names unknown services %s: use one of %s'
                    % (', '.join(sorted(unknown)), ', '.join(sorted(known))))
            if services:
                placed[host] = services
        return placed, ignored


def _split(value):
    return [v.strip() for v in re.split(r'[,\s]+', value) if v.strip()]


def _host_name(path, lineno, words):
    """The ring name of the host on an Ansible INI host line."""
    host = words[0]
    if _RANGE.search(host):
        raise InventoryError(
            '%s, line %d: host range %s is not supported: list the hosts '
            'one per line' % (path, lineno, host))
    for word in words[1:]:
        key, _, value = word.partition('=')
        if key == 'rpc_zmq_host' and value:
            return value
    return host


def _ini_sections(text, path):
    """{section: [(line number, line)]} of an INI text, in file order,
    without blank lines and comments."""
    sections = {}
    current = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in '#;':
            continue
        if line.startswith('[') and line.endswith(']'):
            current = line[1:-1].strip()
            sections.setdefault(current, [])
            continue
        if current is None:
            raise InventoryError(
                '%s, line %d: %r comes before any [section]: start with '
                '[host] (services = ...) or an Ansible [group]' % (
                    path, lineno, line))
        sections[current].append((lineno, line))
    return sections


def _is_services_ini(sections):
    """Whether every section is a host with ``services`` lines only."""
    return bool(sections) and all(
        lines and all(re.match(r'services\s*[=:]', l) for _, l in lines)
        for lines in sections.values())


def _services_inventory(sections):
    hosts = {}
    for host, lines in sections.items():
        hosts[host] = set()
        for _, line in lines:
            hosts[host].update(_split(re.split(r'[=:]', line, 1)[1]))
    return Inventory(hosts, ansible=False)


def _ansible_section(section, lines, members, children, path):
    """Add Ansible INI section *section* to *members* ({group: hosts}) or
    *children* ({group: groups})."""
    name, _, suffix = section.partition(':')
    if suffix == 'vars':
        return
    for lineno, line in lines:
        words = line.split()
        if suffix == 'children':
            children.setdefault(name, set()).add(words[0])
        elif not suffix:
            members.setdefault(name, set()).add(
                _host_name(path, lineno, words))
        else:
            raise InventoryError('%s: section [%s] is neither a group, '
                                 ':children nor :vars' % (path, section))
    members.setdefault(name, set())


def _parse_ini(text, path):
    sections = _ini_sections(text, path)
    if _is_services_ini(sections):
        return _services_inventory(sections)
    # Ansible: groups of hosts, groups of groups.
    members, children = {}, {}
    for section, lines in sections.items():
        _ansible_section(section, lines, members, children, path)
    return Inventory(_flatten(members, children, path), ansible=True)


def _flatten(members, children, path):
    """{host: groups}, a host being in a group and all its parents."""
    hosts = {}

    def walk(group, seen):
        if group in seen:
            raise InventoryError('%s: group %s contains itself' % (
                path, group))
        found = set(members.get(group, ()))
        for child in children.get(group, ()):
            found |= walk(child, seen | {group})
        return found

    for group in set(members) | set(children):
        for host in walk(group, frozenset()):
            hosts.setdefault(host, set()).add(group)
    return hosts


def _yaml_group(name, body, members, children, path):
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InventoryError('%s: group %s must be a mapping with hosts: or '
                             'children:' % (path, name))
    members.setdefault(name, set())
    for host, hostvars in (body.get('hosts') or {}).items():
        host = str(host)
        if isinstance(hostvars, dict) and hostvars.get('rpc_zmq_host'):
            host = str(hostvars['rpc_zmq_host'])
        members[name].add(host)
    for child, child_body in (body.get('children') or {}).items():
        children.setdefault(name, set()).add(child)
        _yaml_group(child, child_body, members, children, path)


def _is_ansible_yaml(data):
    """Whether YAML mapping *data* is an Ansible inventory (``all:``, or
    groups with ``hosts:`` or ``children:``)."""
    return 'all' in data or any(
        isinstance(v, dict) and ('hosts' in v or 'children' in v)
        for v in data.values())


def _yaml_host_services(host, services, path):
    """The set of services of *host*: a list, a string of them, or a
    mapping with ``services:``."""
    if isinstance(services, dict):
        services = services.get('services')
    if isinstance(services, str):
        services = _split(services)
    if not isinstance(services, list):
        raise InventoryError(
            '%s: host %s must map to a list of services, such as '
            '%s: [nova-compute]' % (path, host, host))
    return {str(s) for s in services}


def _parse_yaml(text, path):
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError('%s is not valid YAML: %s' % (path, exc))
    if not isinstance(data, dict) or not data:
        raise InventoryError('%s holds no mapping of hosts or groups' % path)
    if not _is_ansible_yaml(data):
        return Inventory({str(host): _yaml_host_services(host, services, path)
                          for host, services in data.items()}, ansible=False)
    members, children = {}, {}
    for name, body in data.items():
        _yaml_group(name, body, members, children, path)
    return Inventory(_flatten(members, children, path), ansible=True)


def load(path):
    """The :class:`Inventory` in the file at *path*."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError as exc:
        raise InventoryError('Inventory %s cannot be read: %s' % (
            path, exc.strerror))
    except UnicodeDecodeError:
        raise InventoryError('Inventory %s is not UTF-8 text' % path)
    if path.endswith(('.yaml', '.yml')):
        return _parse_yaml(text, path)
    return _parse_ini(text, path)
