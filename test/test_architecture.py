"""The package's shape: the core imports no ROS, its modules import each other without a circle,
and ``import hmseg_core`` / the ``hmseg-core`` parser stay light (no torch, numpy, yaml, ...).

The import checks read the source (``ast``), so they see every import: module level, inside
functions and behind conditions alike; the light-import checks run a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "hmseg_core"

#: top-level modules of ROS 2 (and of this repository's ROS side) the core must never import
ROS_MODULES = {
    "hmseg_ros", "rclpy", "rclcpp", "rcl", "rcl_interfaces", "rcutils", "rmw", "rosidl_runtime_py", "rosidl_parser",
    "builtin_interfaces", "rosbag2_py", "ros2cli", "launch", "launch_ros", "launch_testing", "launch_testing_ros",
    "ament_index_python", "cv_bridge", "image_transport", "message_filters", "tf2_ros", "tf2_py",
}
#: suffixes of ROS interface packages (sensor_msgs, std_srvs, ...)
ROS_SUFFIXES = ("_msgs", "_srvs", "_actions", "_interfaces")

#: what neither ``import hmseg_core`` nor building the command's parser may pull in
HEAVY = ["torch", "yaml", "numpy", "PIL", "tqdm", "tvm", "rclpy", "rosbags"]


# ---------------------------------------------------------------------------- the checker
@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to an absolute module name."""

    source: str        # importing module
    target: str        # imported module (absolute)
    file: Path
    line: int
    type_only: bool    # under ``if TYPE_CHECKING:`` (never executed)
    in_function: bool  # runs when the function is called, not when the module is imported

    def where(self, root: Path) -> str:
        return f"{self.file.relative_to(root)}:{self.line}"


def package_modules(package_dir: Path) -> Dict[str, Tuple[Path, bool]]:
    """Module name -> (file, is a package ``__init__``) for every ``.py`` under ``package_dir``."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _walk(node: ast.AST, type_only: bool = False, in_function: bool = False) -> Iterator[Tuple[ast.AST, bool, bool]]:
    """Every node below ``node``, with whether it sits under ``if TYPE_CHECKING:`` and in a function."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True, in_function
                yield from _walk(stmt, True, in_function or isinstance(stmt, FUNCTIONS))
            for stmt in child.orelse:
                yield stmt, type_only, in_function
                yield from _walk(stmt, type_only, in_function or isinstance(stmt, FUNCTIONS))
            continue
        yield child, type_only, in_function
        yield from _walk(child, type_only, in_function or isinstance(child, FUNCTIONS))


def _resolve(module: str, is_package: bool, level: int, name: Optional[str]) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    if not base:
        raise ValueError(f"{module}: relative import beyond the top-level package")
    return ".".join(base + ([name] if name else []))


def collect_imports(package_dir: Path) -> Tuple[Dict[str, Tuple[Path, bool]], List[Import]]:
    """Every import in the package, module level and inside functions alike.

    ``from pkg import name`` imports the module ``pkg.name`` when the package has one, else
    ``pkg``; so ``from . import x`` inside a package imports the submodule ``x``, not the package.
    ``importlib.import_module("a.b")`` with a constant absolute name counts too.
    """
    modules = package_modules(package_dir)
    found = []
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, type_only, in_function in _walk(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if a.name != "*" and sub in modules else base)
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
                f = node.func
                if (isinstance(f, ast.Attribute) and f.attr == "import_module") or (isinstance(f, ast.Name) and f.id in ("import_module", "__import__")):
                    targets = [node.args[0].value]
            for target in dict.fromkeys(targets):
                found.append(Import(module, target, path, node.lineno, type_only, in_function))
    return modules, found


def is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_MODULES or top.endswith(ROS_SUFFIXES)


def ros_imports(imports: Sequence[Import]) -> List[Import]:
    return [i for i in imports if is_ros(i.target)]


def _internal(target: str, modules: Dict[str, Tuple[Path, bool]]) -> Optional[str]:
    """The package module an import target names (``import a.b.c`` of a function ``c``: ``a.b``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(modules: Dict[str, Tuple[Path, bool]], imports: Sequence[Import]) -> Dict[str, Dict[str, Import]]:
    """module -> {imported module of the package: the first import statement of it}; executed imports only."""
    graph: Dict[str, Dict[str, Import]] = {m: {} for m in modules}
    for i in imports:
        target = _internal(i.target, modules)
        if target is not None and target != i.source and not i.type_only:
            graph[i.source].setdefault(target, i)
    return graph


def find_cycles(graph: Dict[str, Dict[str, Import]]) -> List[Tuple[List[str], List[str]]]:
    """``(cycle, component)`` per strongly connected component of more than one module: its
    modules, and a shortest cycle ``[a, b, ..., a]`` through the first of them (Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)

    cycles = []
    for component in sorted(components):
        members, start = set(component), component[0]
        parent: Dict[str, str] = {}
        frontier, seen, end = [start], {start}, None
        while frontier and end is None:  # breadth first: the shortest way back to start
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        end = v
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        parent[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append((path[::-1] + [start], component))
    return cycles


def describe_cycle(cycle: Sequence[str], component: Sequence[str], graph: Dict[str, Dict[str, Import]], root: Path) -> str:
    """``a (a.py:3) -> b (b.py:7) -> a``: each step with the import statement that makes it, and
    the other modules caught in the same circle, if any."""
    steps = [f"{a} ({graph[a][b].where(root)})" for a, b in zip(cycle, cycle[1:])]
    others = [m for m in component if m not in cycle]
    return " -> ".join(steps + [cycle[-1]]) + (f"  [also in this circle: {', '.join(others)}]" if others else "")


def check_package(package_dir: Path) -> Tuple[List[str], List[str]]:
    """(ROS imports, import cycles) of a package, each as readable lines."""
    modules, imports = collect_imports(package_dir)
    root = package_dir.parent
    ros = [f"{i.where(root)}: {i.source} imports {i.target}" for i in ros_imports(imports)]
    graph = import_graph(modules, imports)
    return ros, [describe_cycle(c, component, graph, root) for c, component in find_cycles(graph)]


# ---------------------------------------------------------------------------- the real package
def test_core_imports_no_ros():
    ros, _ = check_package(CORE)
    assert not ros, "hmseg_core must not import ROS (put it in hmseg_ros, e.g. as a hmseg_core.commands extension):\n" + "\n".join(ros)


def test_core_modules_import_each_other_without_a_circle():
    _, cycles = check_package(CORE)
    assert not cycles, "import circles between hmseg_core modules:\n" + "\n".join(cycles)


def test_cli_modules_import_only_light_modules_at_module_level():
    """What ``hmseg_core.cli.*`` imports when loaded: the standard library, other ``hmseg_core.cli``
    modules, and ``hmseg_core`` modules that themselves load only the standard library, their
    packages' ``__init__`` included (constants such as :mod:`hmseg_core.tensor_layouts`, not
    :mod:`hmseg_core.deploy.tuning`: ``hmseg_core.deploy`` loads the runtime); handlers import the
    rest when run."""
    modules, imports = collect_imports(CORE)
    at_load: Dict[str, List[Import]] = {m: [] for m in modules}
    for i in imports:
        if not i.in_function and not i.type_only:
            at_load[i.source].append(i)

    def stdlib(name: str) -> bool:
        return name.split(".")[0] in sys.stdlib_module_names

    def light(module: str, seen: Set[str]) -> bool:
        """Loads the standard library only, its packages' ``__init__`` (which run first) included."""
        seen.add(module)
        parents = [module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)]
        if any(p not in seen and not light(p, seen) for p in parents):
            return False
        for i in at_load[module]:
            inner = _internal(i.target, modules)
            if not (stdlib(i.target) or (inner is not None and (inner in seen or light(inner, seen)))):
                return False
        return True

    bad = []
    for module, found in at_load.items():
        if module == "hmseg_core.cli" or module.startswith("hmseg_core.cli."):
            for i in found:
                inner = _internal(i.target, modules)
                ok = stdlib(i.target) or (inner is not None and (inner.startswith("hmseg_core.cli") or light(inner, set())))
                if not ok:
                    bad.append(f"{i.where(ROOT)}: {module} imports {i.target} at module level")
    assert not bad, "import these inside the handler that needs them:\n" + "\n".join(bad)


def _fresh_python(*code: str) -> dict:
    """The JSON value a fresh interpreter prints last, running the ``code`` pieces in turn."""
    res = subprocess.run([sys.executable, "-c", "\n".join(textwrap.dedent(c) for c in code)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


LOADED = f"""
    import json, sys
    heavy = {HEAVY!r}
    print(json.dumps(sorted(h for h in heavy if any(m == h or m.startswith(h + ".") for m in sys.modules))))
"""


def test_import_hmseg_core_imports_no_torch():
    loaded = _fresh_python("import hmseg_core", LOADED)
    assert "torch" not in loaded and not loaded, f"import hmseg_core imported {loaded}"


def test_building_the_cli_parser_imports_nothing_heavy():
    loaded = _fresh_python("""
        import hmseg_core.cli
        hmseg_core.cli.build_parser().format_help()
    """, LOADED)
    assert not loaded, f"building the hmseg-core parser imported {loaded}"


def test_public_names_load_on_first_use():
    import hmseg_core

    for name in hmseg_core.__all__:
        assert name in dir(hmseg_core)
        assert getattr(hmseg_core, name) is not None
    from hmseg_core import Genotype
    from hmseg_core.genotype import Genotype as defined

    assert Genotype is defined
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hmseg_core.nope  # noqa: B018


# ---------------------------------------------------------------------------- the CLI's extensions
def test_replay_eval_comes_from_the_hmseg_ros_extension():
    from hmseg_core.cli import COMMANDS_GROUP, build_parser, extension_entry_points

    assert "hmseg_ros.cli:register" in [ep.value for ep in extension_entry_points(COMMANDS_GROUP)], \
        "entry point missing: pip install -e . (setup.py declares hmseg_core.commands)"
    args = build_parser().parse_args(["replay-eval", "--checkpoint", "x.pt", "--network-size", "48x64"])
    assert args.func.__module__ == "hmseg_ros.cli" and args.network_size == (48, 64)


def test_a_broken_extension_warns_and_the_rest_works(monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    import hmseg_core.cli as cli

    broken = [EntryPoint("broken", "hmseg_no_such_module.cli:register", cli.COMMANDS_GROUP),
              EntryPoint("raises", "json:loads", cli.COMMANDS_GROUP)]  # register(sub) raises TypeError
    monkeypatch.setattr(cli, "extension_entry_points", lambda group=cli.COMMANDS_GROUP: broken)
    args = cli.build_parser().parse_args(["genotype", "mrms_tiny"])
    assert args.command == "genotype"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("hmseg-core: warning: command extension") for line in err)
    assert "'broken'" in err[0] and "ModuleNotFoundError" in err[0] and "'raises'" in err[1]


def test_python_dash_m_runs_the_command():
    res = subprocess.run([sys.executable, "-m", "hmseg_core.cli", "genotype", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("hmseg-core genotype: error: unknown model 'nope'")
    assert len(res.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- the checker itself
def _tree(tmp_path: Path, files: Dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path / sorted(files)[0].split("/")[0]


def test_checker_reports_a_cycle_through_a_function_level_import(tmp_path):
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "def f():\n    from .a import thing\n    return thing\n",
        "pkg/c.py": "import pkg.a\n",  # into the cycle, not on it
    })
    ros, cycles = check_package(pkg)
    assert ros == []
    assert cycles == ["pkg.a (pkg/a.py:1) -> pkg.b (pkg/b.py:2) -> pkg.a"]


def test_checker_resolves_relative_imports_and_package_inits(tmp_path):
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "from . import sub\n",
        "pkg/sub/__init__.py": "from .x import X\n",
        "pkg/sub/x.py": "from .. import util\nfrom . import y\nX = 1\n",  # own package's submodules: no edge to pkg.sub
        "pkg/sub/y.py": "from ..util import helper\n",
        "pkg/util.py": "def helper():\n    from pkg import sub\n",  # the submodule pkg.sub (its __init__)
    })
    modules, imports = collect_imports(pkg)
    edges = {(i.source, i.target) for i in imports}
    assert ("pkg.sub.x", "pkg.util") in edges and ("pkg.sub.x", "pkg.sub.y") in edges
    assert ("pkg.sub", "pkg.sub.x") in edges and ("pkg", "pkg.sub") in edges and ("pkg.sub.y", "pkg.util") in edges
    assert ("pkg.util", "pkg.sub") in edges
    _, cycles = check_package(pkg)
    assert cycles == ["pkg.sub (pkg/sub/__init__.py:1) -> pkg.sub.x (pkg/sub/x.py:1) -> pkg.util (pkg/util.py:2) -> pkg.sub"
                      "  [also in this circle: pkg.sub.y]"]


def test_checker_counts_a_package_name_import_as_the_package(tmp_path):
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "from .a import A\n",
        "pkg/a.py": "from . import b\nA = 1\n",
        "pkg/b.py": "from . import A\n",  # a name, not a module: the package __init__ runs
    })
    _, cycles = check_package(pkg)
    assert cycles == ["pkg (pkg/__init__.py:1) -> pkg.a (pkg/a.py:1) -> pkg.b (pkg/b.py:1) -> pkg"]


def test_checker_ignores_type_only_imports_for_cycles_but_not_for_ros(tmp_path):
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n    import sensor_msgs.msg\n",
    })
    ros, cycles = check_package(pkg)
    assert cycles == [] and ros == ["pkg/b.py:4: pkg.b imports sensor_msgs.msg"]


def test_checker_finds_ros_imports_anywhere(tmp_path):
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "import rosbags\n",  # the pure-Python bag library is not ROS
        "pkg/a.py": "def run():\n    try:\n        from hmseg_ros.replay_eval import run_replay_eval\n    except ImportError:\n        pass\n",
        "pkg/b.py": "import importlib\nclass N:\n    def m(self):\n        import rclpy.node\n        return importlib.import_module('std_msgs.msg')\n",
    })
    ros, _ = check_package(pkg)
    assert ros == ["pkg/a.py:3: pkg.a imports hmseg_ros.replay_eval", "pkg/b.py:4: pkg.b imports rclpy.node",
                   "pkg/b.py:5: pkg.b imports std_msgs.msg"]
