"""Write docs/api.md: one mkdocstrings directive (``::: module.name``) per public name.

    python tools/api_page.py            # rewrite docs/api.md
    python tools/api_page.py --check    # exit 1 if docs/api.md is not what this writes (CI)

The public names of a module are its ``__all__`` (or, without one, the functions and classes it
defines), plus the names it loads on first use (``_TORCH_NAMES``, ``_APP_NAMES``). The page's
text comes from the docstrings when mkdocs builds it, so it cannot drift from the code; a name
removed from the code fails ``mkdocs build --strict`` (mkdocstrings cannot find it), a name
added without rerunning this fails ``--check`` and ``tests/test_architecture.py``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pathlib
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"

INTRO = """# API

Public names, generated from the docstrings (`python tools/api_page.py` writes this page's
directives; everything else is internal). Every estimator takes the randomness first (a
`jax.random` key for JAX, a `numpy.random.Generator` for the numba backend, a `torch.Generator`
for the torch backend; never defaulted), then the operator, then keyword-only configuration, and
returns `Estimate(value, sem, num_matvecs)` (block estimators: `dict[name, Estimate]`).
JAX is an extra (`pip install 'sketchtrace[jax]'`), as torch is (`'sketchtrace[torch]'`, loaded on
first use); `pinn_adapters` needs JAX.
"""

#: (module, heading, the page that explains it)
SECTIONS = (
    ("sketchtrace", "sketchtrace (`import sketchtrace as st`)", "getting-started.md"),
    ("sketchtrace.operators", "sketchtrace.operators", "operators.md"),
    ("sketchtrace.backends", "sketchtrace.backends", "architecture.md"),
    ("sketchtrace.sharding", "sketchtrace.sharding", "sharding.md"),
    ("sketchtrace.validation", "sketchtrace.validation", "reliability.md"),
    ("sketchtrace.testing", "sketchtrace.testing", "testing.md"),
    ("sketchtrace.testing.strategies", "sketchtrace.testing.strategies (hypothesis)", "testing.md"),
    ("pinn_adapters", "pinn_adapters (`import pinn_adapters as pa`)", "pinn.md"),
    ("pinn_adapters.problems", "pinn_adapters.problems", "problems.md"),
    ("pinn_adapters.nets", "pinn_adapters.nets", "recipe.md"),
    ("pinn_adapters.causal", "pinn_adapters.causal", "recipe.md"),
    ("pinn_adapters.optim", "pinn_adapters.optim", "recipe.md"),
    ("pinn_adapters.second_order", "pinn_adapters.second_order", "second-order.md"),
    ("pinn_adapters.sampling", "pinn_adapters.sampling", "second-order.md"),
    ("pinn_adapters.fem", "pinn_adapters.fem", "qtensor.md"),
    ("pinn_adapters.app", "pinn_adapters.app (the application behind `sketchtrace pinn`)", "cli.md"),
    ("pinn_adapters.adapters", "pinn_adapters.adapters", "adapters.md"),
    ("pinn_adapters.torch", "pinn_adapters.torch", "torch.md"),
    ("pinn_adapters.torch.pina", "pinn_adapters.torch.pina", "adapters.md"),
    ("pinn_adapters.torch.deepxde", "pinn_adapters.torch.deepxde", "adapters.md"),
)

#: Docstrings whose prose after a section griffe's numpy parser reads as items (it warns, and
#: strict mode fails): rendered without the parser's warnings until a "Notes" header is added in
#: the owning module (by definition path). Empty: every public docstring parses.
UNPARSED: frozenset[str] = frozenset()

#: Names a module loads on first use (module ``__getattr__``), by the tuple that lists them.
LAZY_LISTS = ("_TORCH_NAMES", "_APP_NAMES")


def public_names(mod) -> list[str]:
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(mod).items()
            if not n.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", None) == mod.__name__
        ]
    names = list(names)
    for lazy in LAZY_LISTS:
        names += [n for n in getattr(mod, lazy, ()) if n not in names]
    return names


def target(mod, name: str) -> str:
    """The path mkdocstrings renders: ``module.name`` where the module binds the name itself (griffe
    follows the import), the defining module's path for a name loaded on first use."""
    if name in vars(mod):
        return f"{mod.__name__}.{name}"
    obj = getattr(mod, name)
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return f"{obj.__module__}.{obj.__qualname__}"


def identity(obj):
    return obj.__name__ if isinstance(obj, types.ModuleType) else id(obj)


def render() -> str:
    out = [INTRO]
    seen: dict = {}  # object -> where it is documented
    for mod_name, heading, page in SECTIONS:
        mod = importlib.import_module(mod_name)
        out.append(f"## {heading}\n\n[{page}]({page})\n")
        again = []
        for name in public_names(mod):
            obj = getattr(mod, name)
            where = seen.get(identity(obj))
            if where is not None and not isinstance(obj, (str, int, float, tuple, dict)):
                public, path = where
                alias = "" if public.rsplit(".", 1)[-1] == name else f" (as `{mod_name}.{name}`)"
                again.append(f"[`{public}`][{path}]{alias}")  # a link: strict mode checks it
                continue
            path = target(mod, name)
            seen.setdefault(identity(obj), (f"{mod_name}.{name}", path))
            options = []
            if isinstance(obj, types.ModuleType):
                options.append("members: false")
            elif path != f"{mod_name}.{name}":  # loaded on first use: headed by its public name
                options += [f'heading: "{mod_name}.{name}"', f'toc_label: "{name}"']
            if f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}" in UNPARSED:
                options.append("docstring_options:\n        warnings: false")
            block = "".join(f"\n      {o}" for o in options)
            out.append(f"::: {path}" + (f"\n    options:{block}" if options else "") + "\n")
        if again:
            out.append(f"Also in `{mod_name}`, documented above: " + ", ".join(again) + ".\n")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    text = render()
    if args.check:
        if PAGE.read_text() != text:
            print("docs/api.md is out of date: run python tools/api_page.py", file=sys.stderr)
            return 1
        return 0
    tmp = PAGE.with_name(f".{PAGE.name}.tmp")  # written whole, then renamed: never half a page
    tmp.write_text(text)
    os.replace(tmp, PAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
