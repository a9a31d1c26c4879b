"""Draw the import graph of sketchtrace and pinn_adapters, one box per subpackage, in layers.

    python tools/import_graph.py            # writes docs/figures/imports.png

Modules are grouped by subpackage (``sketchtrace.estimators``, ``pinn_adapters.app``, ...);
an arrow ``A -> B`` means some module of ``A`` imports some module of ``B``. Boxes are placed
by layer: a box sits above every box it imports, so all arrows point down when the layering
holds (a cycle would show as an arrow pointing up, drawn in red). Uses grimp (installed with
import-linter) and matplotlib.
"""

from __future__ import annotations

import argparse
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def group(module: str) -> str:
    """``sketchtrace.estimators._xtrace`` -> ``sketchtrace.estimators``; top-level modules keep their name."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def package_edges(packages=("sketchtrace", "pinn_adapters")):
    import grimp

    graph = grimp.build_graph(*packages, cache_dir=None)
    edges = set()
    for m in graph.modules:
        for t in graph.find_modules_directly_imported_by(m):
            a, b = group(m), group(t)
            if a != b and not a.startswith(b + ".") and a not in packages:
                edges.add((a, b))
    nodes = sorted({group(m) for m in graph.modules} - set(packages))
    return nodes, sorted(e for e in edges if e[0] in nodes and e[1] in nodes)


def layers(nodes, edges):
    """Longest-path layering: 0 for boxes that import nothing; cycles are cut arbitrarily."""
    succ = {n: [b for a, b in edges if a == n] for n in nodes}
    depth, active = {}, set()

    def visit(n):
        if n in depth:
            return depth[n]
        if n in active:  # a cycle: report it by the red arrow, do not recurse
            return 0
        active.add(n)
        depth[n] = 1 + max((visit(s) for s in succ[n]), default=-1)
        active.discard(n)
        return depth[n]

    for n in nodes:
        visit(n)
    return depth


def draw(out: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes, edges = package_edges()
    depth = layers(nodes, edges)
    rows: dict[int, list[str]] = {}
    for n in sorted(nodes, key=lambda n: (n.split(".")[0], n)):
        rows.setdefault(depth[n], []).append(n)
    pos = {}
    for d, names in rows.items():
        for i, n in enumerate(names):
            pos[n] = ((i + 1) / (len(names) + 1), d)
    fig, ax = plt.subplots(figsize=(14, 1.6 * (max(rows) + 1) + 1))
    for a, b in edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        up = y1 >= y0
        ax.annotate(
            "",
            xy=(x1, y1 + 0.12),
            xytext=(x0, y0 - 0.12),
            arrowprops=dict(arrowstyle="->", color="red" if up else "0.55", lw=1.6 if up else 0.8),
        )
    for n, (x, y) in pos.items():
        color = "#dbe9f6" if n.startswith("sketchtrace") else "#fde2c8"
        ax.text(
            x,
            y,
            n.replace("pinn_adapters", "pa").replace("sketchtrace", "st"),
            ha="center",
            va="center",
            fontsize=8,
            bbox=dict(boxstyle="round", fc=color, ec="0.3"),
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, max(rows) + 0.6)
    ax.axis("off")
    ax.set_title("Imports between subpackages (st = sketchtrace, pa = pinn_adapters); arrows point down the layers")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)
    return nodes, edges


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "figures" / "imports.png")
    args = parser.parse_args(argv)
    nodes, edges = draw(args.out)
    print(f"{len(nodes)} subpackages, {len(edges)} import edges -> {args.out}")


if __name__ == "__main__":
    main()
