"""Methods compose the ops: no file of resad_kit/methods re-implements an op's maths.

The guard parses every ``resad_kit/methods/*.py`` and flags, per function:

- ``matmul``: any ``a @ b``. Dot products of features with directions or banks are ops:
  :func:`~resad_kit.ops.cosine_score` (the text branch), :func:`~resad_kit.ops.projection_score`
  (the residual branch), :func:`~resad_kit.ops.retrieve`, :func:`~resad_kit.ops.knn_distance`,
  ``losses.stop_gradient_projection``.
- ``norm``: ``x.norm(...)``, ``torch.norm``, ``linalg.norm`` / ``vector_norm``: the residual
  magnitude is :func:`~resad_kit.ops.magnitude_score`.
- ``residual``: a subtraction with an ``F.normalize(...)`` call, or with a name bound to one
  (also indexed, ``reference[i]``): the residuals of unit vectors are
  :func:`~resad_kit.ops.visual_residual`, :func:`~resad_kit.ops.text_residual`,
  :func:`~resad_kit.ops.global_residual`.
- ``simplex``: ``softmax`` / ``sparsemax`` / ``entmax`` calls and ``.cumsum``, ``.sort``,
  ``.argsort``, ``.topk``: the sparsemax threshold is :func:`~resad_kit.ops.sparsemax` (inside
  ``retrieve``), the top-q mean :func:`~resad_kit.ops.top_fraction_mean`.
- ``clamp``: ``.clamp``, ``.clamp_min``, ``relu`` on anything but the output of an op score
  (a name bound to ``projection_score(...)``, or the call itself): the official code's
  ``max(0, ·)`` of the residual projections is Res²CLIP's flag ``clamp_residual_projection``,
  applied to :func:`~resad_kit.ops.projection_score`, and no other clamp belongs in a method.

:data:`ALLOWED` lists the exceptions, each with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METHODS = ROOT / "resad_kit" / "methods"

ALLOWED: set[tuple[str, str, str]] = set()  # no exception left
SIMPLEX_CALLS = {"softmax", "log_softmax", "sparsemax", "entmax", "entmax15", "gumbel_softmax"}
SIMPLEX_METHODS = {"cumsum", "sort", "argsort", "topk"}
NORM_CALLS = {"norm", "vector_norm"}
CLAMP_CALLS = {"clamp", "clamp_min", "clamp_", "clamp_min_", "relu", "relu_"}
SCORE_OPS = {"projection_score"}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _calls(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and _name(n.func) in names for n in ast.walk(node))


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _own_nodes(scope: ast.AST):
    """The nodes of ``scope`` outside its nested functions."""
    for child in ast.iter_child_nodes(scope):
        yield child
        if not isinstance(child, ast.FunctionDef):
            yield from _own_nodes(child)


def _bound_from(scope: ast.AST, names: set[str]) -> set[str]:
    """Names that ``scope`` assigns from an expression calling one of ``names``."""
    bound = set()
    for n in _own_nodes(scope):
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value and _calls(n.value, names):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            for t in targets:
                bound |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
    return bound


def _walk(node: ast.AST, scopes: tuple[ast.AST, ...]):
    """Every node with its enclosing scopes (the module, then functions, innermost last)."""
    yield node, scopes
    for child in ast.iter_child_nodes(node):
        inner = (*scopes, child) if isinstance(child, ast.FunctionDef) else scopes
        yield from _walk(child, inner)


def _rule(n: ast.AST, unit: set[str], scored: set[str]) -> str | None:
    if isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult):
        return "matmul"
    if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub):
        for side in (n.left, n.right):
            if _calls(side, {"normalize"}) or _root_name(side) in unit:
                return "residual"
    if not isinstance(n, ast.Call):
        return None
    name = _name(n.func)
    if name in NORM_CALLS:
        return "norm"
    if name in SIMPLEX_CALLS or (name in SIMPLEX_METHODS and isinstance(n.func, ast.Attribute)):
        return "simplex"
    if name in CLAMP_CALLS:
        target = n.func.value if isinstance(n.func, ast.Attribute) else None
        if target is None or _name(target) == "torch":  # relu(x), torch.clamp(x, ...)
            target = n.args[0] if n.args else None
        ok = target is not None and (_calls(target, SCORE_OPS) or _root_name(target) in scored)
        return None if ok else "clamp"
    return None


def violations(
    source: str, filename: str = "<source>", allowed: set = ALLOWED
) -> list[tuple[str, str, str, int]]:
    """``(file, function, rule, line)`` of every re-implemented op in ``source``."""
    tree = ast.parse(source)
    bound: dict[ast.AST, tuple[set[str], set[str]]] = {}
    found = set()
    for n, scopes in _walk(tree, (tree,)):
        for scope in scopes:
            if scope not in bound:
                bound[scope] = (_bound_from(scope, {"normalize"}), _bound_from(scope, SCORE_OPS))
        unit = set().union(*(bound[s][0] for s in scopes))
        scored = set().union(*(bound[s][1] for s in scopes))
        func = getattr(scopes[-1], "name", "<module>")
        rule = _rule(n, unit, scored)
        if rule and (filename, func, rule) not in allowed:
            found.add((filename, func, rule, n.lineno))
    return sorted(found)


def test_no_method_reimplements_an_op():
    """Every file of resad_kit/methods composes the ops (fails on any new inline maths)."""
    files = sorted(METHODS.glob("*.py"))
    assert len(files) >= 5
    found = [v for path in files for v in violations(path.read_text(), path.name)]
    assert not found, f"methods re-implement op maths (file, function, rule, line): {found}"


def test_every_exception_is_still_needed():
    """An entry of ALLOWED whose code is gone must be removed (the list cannot go stale)."""
    for file, func, rule in ALLOWED:
        found = violations((METHODS / file).read_text(), file, allowed=set())
        assert any(v[1:3] == (func, rule) for v in found), (file, func, rule)


# The inline maths of Res2CLIP before it called the ops (commit b04bfa3), abridged.
PRE_REFACTOR = """
def _residuals(self, query, bank):
    q = {t: F.normalize(query.patches[t], dim=-1) for t in needed}
    stacked = torch.stack([q[t] for t in self.used_taps])
    reference = F.normalize(retrieve(stacked, bank).reference, dim=-1)
    return {t: stacked[i] - reference[i] for i, t in enumerate(self.used_taps)}

def forward(self, res, t_text, t_res, c):
    text_local = torch.stack([res.query[t] @ t_text for t in self.taps["text"]]).mean(0)
    vis = torch.stack([res.visual[t].norm(dim=-1) for t in self.taps["visual"]]).mean(0)
    clamp = (lambda x: x.clamp_min(0)) if c.clamp_residual_projection else (lambda x: x)
    return text_local, vis, clamp(res.cls @ t_res)

def threshold(z):
    s = z.sort(dim=-1, descending=True).values
    return (s.cumsum(-1) - 1) / torch.arange(1, z.shape[-1] + 1)

def single_line(q, ref):
    return F.normalize(q, dim=-1) - F.normalize(ref, dim=-1), torch.softmax(q, -1)
"""


def test_the_guard_flags_the_pre_refactor_inline_maths():
    """Each rule fires on the inline code it is meant to catch (the guard can fail)."""
    found = {(func, rule) for _, func, rule, _ in violations(PRE_REFACTOR)}
    assert found == {
        ("_residuals", "residual"),
        ("forward", "matmul"),
        ("forward", "norm"),
        ("forward", "clamp"),
        ("threshold", "simplex"),
        ("single_line", "residual"),
        ("single_line", "simplex"),
    }


def test_the_guard_accepts_composition_from_the_ops():
    """Clamping projection_score's output and normalising a bank are not op maths."""
    source = """
def project(x, direction, clamp):
    score = projection_score(x, direction)
    return score.clamp_min(0) if clamp else score, projection_score(x, direction).clamp(min=0)

def bank(feats, taps):
    return torch.stack([F.normalize(feats.patches[t], dim=-1) for t in taps])
"""
    assert violations(source) == []
    assert violations("def f(x):\n    return torch.relu(x @ x)\n") == [
        ("<source>", "f", "clamp", 2),
        ("<source>", "f", "matmul", 2),
    ]
