"""Every third-party import of the package is a declared requirement of setup.py.

The imports are read with `ast` from l0score/ and kernels/triton (installed as l0score.kernels) and
mapped to distribution names (importlib.metadata's packages_distributions for what is installed,
else the import name, with the usual exceptions such as yaml -> pyyaml). Standard-library modules
are sys.stdlib_module_names. An import needs `install_requires`, unless it is lazy (inside a
function) or guarded (try/except ImportError, `if TYPE_CHECKING`), or sits in a subpackage that the
rest of the package itself imports only lazily (l0score.cluster: "without --ray, Ray is never
imported"); then an extra other than `test` listing it is enough.
"""
import ast
import functools
import importlib.metadata as md
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"l0score": ROOT / "l0score", "l0score.kernels": ROOT / "kernels" / "triton"}
IMPORT_TO_DIST = {"yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn", "cv2": "opencv-python",
                  "attr": "attrs", "google": "protobuf"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(install_requires, {extra: requirements}) as canonical distribution names, read from setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    name = lambda req: canonical(re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0])
    extras = {extra: {name(r) for r in reqs} for extra, reqs in kw.get("extras_require", {}).items()}
    return {name(r) for r in kw["install_requires"]}, extras


@functools.lru_cache(maxsize=None)
def installed() -> dict[str, list[str]]:
    return md.packages_distributions()


def distribution(top: str) -> str:
    dists = installed().get(top)
    return canonical(dists[0] if dists else IMPORT_TO_DIST.get(top, top))


class Imports(ast.NodeVisitor):
    """(absolute module, eager) for every import of one file; eager = at module level, unguarded."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, bool, int]] = []
        self.lazy = 0

    def _nested(self, node):
        self._lazily(ast.iter_child_nodes(node))

    def _lazily(self, nodes):
        self.lazy += 1
        for n in nodes:
            self.visit(n)
        self.lazy -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _nested

    def visit_Try(self, node):
        guards = {"ImportError", "ModuleNotFoundError", "Exception"}
        caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
        if any(g in c for c in caught for g in guards) or any(h.type is None for h in node.handlers):
            self._lazily(node.body)
            for rest in (*node.handlers, *node.orelse, *node.finalbody):
                self.visit(rest)
        else:
            self.generic_visit(node)

    def visit_If(self, node):
        if "TYPE_CHECKING" in ast.unparse(node.test):
            return self._nested(node)
        self.generic_visit(node)

    def visit_Import(self, node):
        self.found += [(a.name, self.lazy == 0, node.lineno) for a in node.names]

    def visit_ImportFrom(self, node):
        if node.level == 0:
            base = node.module
        else:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        targets = [base] if node.module else [f"{base}.{a.name}" for a in node.names]
        self.found += [(t, self.lazy == 0, node.lineno) for t in targets]


def package_imports() -> dict[str, list[tuple[str, bool, int]]]:
    """{module name: imports} over the package's sources."""
    out = {}
    for prefix, root in SOURCES.items():
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root).with_suffix("").parts
            is_package = rel[-1] == "__init__"
            module = ".".join((prefix, *rel[:-1]) if is_package else (prefix, *rel))
            visitor = Imports(module, is_package)
            visitor.visit(ast.parse(f.read_text(), str(f)))
            out[module] = visitor.found
    return out


def only_lazily_imported(subpackage: str, imports) -> bool:
    """No module outside `subpackage` imports it (or anything in it) eagerly."""
    inside = lambda m: m == subpackage or m.startswith(subpackage + ".")
    return not any(eager and inside(target) for module, found in imports.items() if not inside(module)
                   for target, eager, _ in found)


def third_party(target: str) -> str | None:
    top = target.split(".")[0]
    return None if top in sys.stdlib_module_names or top in ("l0score", "kernels", "__future__") else top


def test_every_third_party_import_is_declared():
    required, extras = declared()
    optional = set().union(*(reqs for extra, reqs in extras.items() if extra != "test"))
    imports = package_imports()
    missing = []
    for module, found in imports.items():
        for target, eager, line in found:
            top = third_party(target)
            if top is None:
                continue
            dist = distribution(top)
            if dist in required:
                continue
            subpackage = ".".join(module.split(".")[:2]) if module.count(".") >= 2 else None
            lazy = not eager or (subpackage is not None and only_lazily_imported(subpackage, imports))
            if not (lazy and dist in optional):
                where = "install_requires" if not lazy else "install_requires or an extra"
                missing.append(f"{module}:{line} imports {top} (distribution {dist}), not in {where}")
    assert not missing, "undeclared dependencies:\n" + "\n".join(missing)


def test_the_scan_sees_the_package():
    """The scan is not vacuous: it finds the known imports, classifies laziness, resolves relative ones."""
    imports = package_imports()
    assert {"l0score.cli", "l0score.cli.score", "l0score.judge.verify", "l0score.kernels.score"} <= imports.keys()
    cli = imports["l0score.cli.score"]
    assert ("rich.table", True) in [(t, e) for t, e, _ in cli]
    assert any(t == "l0score.cli.args" and e for t, e, _ in cli)  # `from .args import ...`
    verify = imports["l0score.judge.verify"]
    assert any(t.startswith("l0score.core.checkpoint") and not e for t, e, _ in verify)  # inside verify()
    assert distribution("yaml") == "pyyaml" and distribution("torch") == "torch"
    guarded = Imports("x.y", False)
    guarded.visit(ast.parse("try:\n    import ray\nexcept ImportError:\n    ray = None\nimport numpy\n"))
    assert guarded.found == [("ray", False, 2), ("numpy", True, 5)]
