"""The import rules of DESIGN.md section 4, read from the source with ast.

Nothing is imported: every ``import`` statement of every module under
zmq_receiver/ (inside functions too, since an import put in a function to
dodge a cycle is still the cycle) becomes an edge of a graph, and the rules
are checked on that graph:

* the daemon (every module outside ``zmq_receiver.admin``) never imports
  the admin tool;
* the admin tool imports only the small shared modules of
  :data:`ADMIN_SHARED`, and through them reaches nothing of the daemon but
  :data:`ADMIN_REACHES_THROUGH`;
* the matchmakers (with the agent) never reach the loop (:data:`LOOP`);
* no cycle among the modules.

Imports by name at run time (``importlib``) are not seen; the package has
none. The last tests run the checker on small synthetic packages, so that
a violation of each rule is shown to be caught.
"""

import ast
import os

import pytest

from tests import support

PACKAGE = 'zmq_receiver'

#: What the admin tool may import of the rest of the package, and why:
#: the control protocol and the TCP endpoint rule it shares with the
#: receiver; the options, exit statuses and topic rules, so that it reads a
#: config and names a path exactly as the receiver does; the matchmakers it
#: queries and edits (ring, redis; not the agent, which is the receiver's);
#: for ``check``, the receiver's own user, IPC-directory and /proc helpers
#: (privileges, rundir, procfs), so that the preflight checks what startup
#: will check rather than a copy of it; for ``ring learn``, the format of the
#: ``/topics`` document it reads (topics_doc); the package itself for
#: ``__version__``.
ADMIN_SHARED = frozenset(PACKAGE + suffix for suffix in (
    '', '.control', '.endpoints', '.errors', '.opts', '.routing',
    '.matchmaker', '.matchmaker.base', '.matchmaker.local',
    '.matchmaker.ring', '.matchmaker.redis',
    '.privileges', '.procfs', '.rundir', '.topics_doc'))

#: Daemon modules the admin tool reaches only through :data:`ADMIN_SHARED`,
#: with the reason. topics_doc holds both the ``/topics`` format (shared)
#: and the exporter's WSGI application, which checks its readers with
#: ``access.allowed``; splitting the two would remove this entry.
ADMIN_REACHES_THROUGH = {
    PACKAGE + '.access': 'topics_doc.TopicsApp checks readers with it',
}

#: The receiver's loop and its startup: what the matchmakers never import.
LOOP = frozenset(PACKAGE + suffix for suffix in (
    '.receiver', '.outlets', '.loop', '.wire', '._wire', '.cli',
    '.startup', '.connections', '.ipcdir', '.ipcfile'))


def module_names(root, package):
    """{dotted name: source path or None} of every module of *package*
    under *root*; compiled extensions (a ``.c`` source) have no path."""
    names = {}
    for directory, subdirs, files in os.walk(os.path.join(root, package)):
        subdirs[:] = [d for d in subdirs if not d.startswith(('.', '_'))]
        parts = os.path.relpath(directory, root).split(os.sep)
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext not in ('.py', '.c'):
                continue
            dotted = '.'.join(parts if stem == '__init__' else parts + [stem])
            names[dotted] = (os.path.join(directory, name)
                             if ext == '.py' else None)
    return names


def _imported(node, module, is_package, known):
    """The modules of *known* that import statement *node* in *module*
    loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if node.level:
        # Relative: from the module's own package, up level - 1 more.
        base = module.split('.')
        base = base if is_package else base[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = '.'.join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    found = []
    for alias in node.names:
        sub = '%s.%s' % (source, alias.name)
        if sub in known:
            found.append(sub)
        elif source in known:
            # A name defined in the module (a function, __version__).
            found.append(source)
    return found


def import_graph(root, package=PACKAGE):
    """{module: set of modules of *package* it imports}, from the source."""
    known = module_names(root, package)
    graph = {}
    for module, path in known.items():
        edges = set()
        if path is not None:
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            is_package = os.path.basename(path) == '__init__.py'
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    edges.update(_imported(node, module, is_package, known))
        edges.discard(module)
        graph[module] = edges
    return graph


def reachable(graph, start):
    """Every module *start* imports, directly or not (without *start*)."""
    seen, todo = set(), list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    seen.discard(start)
    return seen


def cycles(graph):
    """The import cycles of *graph*: its strongly connected components of
    more than one module (Tarjan's algorithm), each a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.get(module, ())):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def _in(module, package):
    return module == package or module.startswith(package + '.')


def daemon_imports_of_admin(graph, package=PACKAGE):
    """``(importer, admin module)`` for each daemon module importing the
    admin tool."""
    admin = package + '.admin'
    return sorted((module, other) for module, edges in graph.items()
                  if not _in(module, admin)
                  for other in edges if _in(other, admin))


def admin_imports_outside(graph, shared, package=PACKAGE):
    """``(admin module, module)`` for each import by the admin tool of a
    module neither in it nor in *shared*."""
    admin = package + '.admin'
    return sorted((module, other) for module, edges in graph.items()
                  if _in(module, admin)
                  for other in edges
                  if not _in(other, admin) and other not in shared)


def admin_reaches(graph, package=PACKAGE):
    """Every module outside the admin tool that it loads, directly or
    through another."""
    admin = package + '.admin'
    found = set()
    for module in graph:
        if _in(module, admin):
            found.update(m for m in reachable(graph, module)
                         if not _in(m, admin))
    return found


def matchmaker_reaches_loop(graph, loop, package=PACKAGE):
    """``(matchmaker module, loop module)`` for each module of *loop* a
    matchmaker module loads, directly or not."""
    matchmaker = package + '.matchmaker'
    return sorted((module, other) for module in graph
                  if _in(module, matchmaker)
                  for other in reachable(graph, module) if other in loop)


@pytest.fixture(scope='module')
def graph():
    return import_graph(support.REPO)


def test_the_graph_sees_the_package(graph):
    # A checker that parses nothing passes every rule: make sure it read
    # the modules and their edges (the startup imports the receiver, the
    # admin tool's entry point its subcommands).
    assert PACKAGE + '.receiver' in graph[PACKAGE + '.startup']
    assert PACKAGE + '.admin.check' in graph[PACKAGE + '.admin.cli']
    assert PACKAGE + '.matchmaker.agent' in graph
    assert PACKAGE + '._wire' in graph[PACKAGE + '.wire']


def test_the_daemon_never_imports_the_admin_tool(graph):
    assert daemon_imports_of_admin(graph) == []


def test_the_admin_tool_imports_only_the_shared_modules(graph):
    assert admin_imports_outside(graph, ADMIN_SHARED) == []


def test_the_admin_tool_reaches_no_more_of_the_daemon(graph):
    extra = admin_reaches(graph) - ADMIN_SHARED - set(ADMIN_REACHES_THROUGH)
    assert extra == set()


def test_the_matchmakers_never_reach_the_loop(graph):
    assert matchmaker_reaches_loop(graph, LOOP) == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


# -- the checker itself, on packages made to break each rule ----------------

def make_package(root, files):
    """Write *files* ({relative path: source}) under *root*, with the
    ``__init__.py`` of every directory."""
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for directory in {(root / rel).parent for rel in files}:
        init = directory / '__init__.py'
        if not init.exists():
            init.write_text('')
    return import_graph(str(root), 'pkg')


def test_the_checker_flags_a_daemon_import_of_admin(tmp_path):
    graph = make_package(tmp_path, {
        'pkg/receiver.py': 'def f():\n    from pkg.admin import tool\n',
        'pkg/admin/tool.py': '',
    })
    assert daemon_imports_of_admin(graph, 'pkg') == [
        ('pkg.receiver', 'pkg.admin.tool')]


def test_the_checker_flags_an_admin_import_of_the_daemon(tmp_path):
    graph = make_package(tmp_path, {
        'pkg/admin/tool.py': 'from pkg import errors, outlets\n'
                             'from . import other\n',
        'pkg/admin/other.py': 'import pkg.errors\n',
        'pkg/errors.py': '',
        'pkg/outlets.py': '',
    })
    assert admin_imports_outside(graph, {'pkg.errors'}, 'pkg') == [
        ('pkg.admin.tool', 'pkg.outlets')]


def test_the_checker_follows_imports_through_shared_modules(tmp_path):
    graph = make_package(tmp_path, {
        'pkg/admin/tool.py': 'from pkg.shared import thing\n',
        'pkg/shared.py': 'from pkg import access\nthing = 1\n',
        'pkg/access.py': '',
    })
    assert admin_imports_outside(graph, {'pkg.shared'}, 'pkg') == []
    assert admin_reaches(graph, 'pkg') == {'pkg.shared', 'pkg.access'}


def test_the_checker_flags_a_matchmaker_reaching_the_loop(tmp_path):
    graph = make_package(tmp_path, {
        'pkg/matchmaker/agent.py': 'from pkg import ratelimit\n',
        'pkg/ratelimit.py': 'from . import wire\n',
        'pkg/wire.py': '',
    })
    assert matchmaker_reaches_loop(graph, {'pkg.wire'}, 'pkg') == [
        ('pkg.matchmaker.agent', 'pkg.wire')]


def test_the_checker_flags_a_cycle_hidden_in_a_function(tmp_path):
    graph = make_package(tmp_path, {
        'pkg/admin/cli.py': 'from pkg.admin import check\n',
        'pkg/admin/check.py': 'def ask():\n'
                              '    from pkg.admin import cli\n',
        'pkg/a.py': 'import pkg.b\n',
        'pkg/b.py': 'from pkg import c\n',
        'pkg/c.py': 'from pkg.a import name\n',
        # A package's __init__ importing its submodules is no cycle.
        'pkg/matchmaker/__init__.py': 'from pkg.matchmaker import ring\n',
        'pkg/matchmaker/ring.py': 'from pkg.matchmaker import base\n',
        'pkg/matchmaker/base.py': '',
    })
    assert cycles(graph) == [['pkg.a', 'pkg.b', 'pkg.c'],
                             ['pkg.admin.check', 'pkg.admin.cli']]
