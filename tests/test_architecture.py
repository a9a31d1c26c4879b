"""The repository's structure, checked: import layering, no cycles, small functions, documented API.

The layer contracts themselves are import-linter contracts in ``pyproject.toml`` (run by
``lint-imports`` in ``.ci/run``); these tests cover what a contract cannot express.
"""

import ast
import importlib
import pathlib
import re

import pytest

grimp = pytest.importorskip("grimp")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sketchtrace", "pinn_adapters")
MAX_FUNCTION_LINES = 80


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def _private(module: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in module.split(".")[1:])


def _edges(graph):
    """Direct imports between modules. A module's import of one of its own ancestor packages
    (``from .. import x`` inside the package) is left out: the ancestor's ``__init__`` is
    already executing when that import runs."""
    return {
        m: sorted(t for t in graph.find_modules_directly_imported_by(m) if not m.startswith(t + "."))
        for m in graph.modules
    }


def _cycles(succ):
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]

    def push(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        return (node, iter(succ.get(node, ())))

    for root in sorted(succ):
        if root in index:
            continue
        work = [push(root)]
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    work.append(push(nxt))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                out.append(sorted(comp))
    return [c for c in out if len(c) > 1]


def test_no_import_cycles(graph):
    cycles = _cycles(_edges(graph))
    assert not cycles, f"import cycles: {cycles}"


def test_cycle_detector_finds_a_planted_cycle(graph):
    succ = _edges(graph)
    succ["sketchtrace.validation"] = succ["sketchtrace.validation"] + ["sketchtrace.estimators._common"]
    assert _cycles(succ), "the cycle check must fail when a cycle is planted"


def test_adapters_import_public_sketchtrace_only(graph):
    bad = sorted(
        (m, t)
        for m in graph.modules
        if m.split(".")[0] == "pinn_adapters"
        for t in graph.find_modules_directly_imported_by(m)
        if t.split(".")[0] == "sketchtrace" and _private(t)
    )
    assert not bad, f"pinn_adapters imports private sketchtrace modules: {bad}"


def test_core_never_imports_the_application(graph):
    assert not graph.chain_exists(importer="sketchtrace", imported="pinn_adapters", as_packages=True)


def _long_functions():
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    body = node.body
                    first = body[1] if len(body) > 1 and _is_docstring(body[0]) else body[0]
                    length = node.end_lineno - first.lineno + 1  # code lines, docstring excluded
                    if length > MAX_FUNCTION_LINES:
                        out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return out


def _is_docstring(stmt):
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(getattr(stmt, "value", None), ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def test_functions_are_small():
    long = _long_functions()
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines of code: {long}"


# ----------------------------------------------------------------------------- documented API

PUBLIC_MODULES = (
    "sketchtrace",
    "sketchtrace.operators",
    "sketchtrace.backends",
    "sketchtrace.validation",
    "sketchtrace.sharding",
    "sketchtrace.testing",
    "pinn_adapters",
    "pinn_adapters.adapters",
    "pinn_adapters.problems",
    "pinn_adapters.app",
)


def _public_names():
    names = set()
    for mod_name in PUBLIC_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # an optional host library is missing
            continue
        names.update(f"{mod_name}:{n}" for n in getattr(mod, "__all__", ()))
    return sorted(names)


def _documented(text, name):
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text) is not None


def test_every_public_name_is_documented():
    """optax's docs-coverage practice: every name in a public ``__all__`` appears in docs/api.md."""
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [q for q in _public_names() if not _documented(text, q.split(":")[1])]
    assert not missing, f"public names missing from docs/api.md: {missing}"


def test_docs_coverage_check_can_fail():
    assert not _documented("`hutchinson_plus`", "hutchinson")
    assert _documented("- `hutchinson(key, op)`", "hutchinson")
