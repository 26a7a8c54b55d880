"""Static scan of student code: known test-bypass tricks, and code the student did not write.

**Tricks** (``PATTERNS``): grading does not depend on anything the student's interpreter does
(the hidden checks are compared on the trusted side, checks.py), so these cannot earn points;
the scan only tells the instructor who tried one. A flagged cell is run like any other.

**Code the student did not write.** An assignment *declares*, in its source notebook's metadata
(``metadata.autograder``, carried into the release so the student reads it too), the parts it
asks the student to write::

    "autograder": {
      "parts": [{"name": "Part B - the EMA update",
                 "functions": ["ema_decay", "ema_update_"],      # what the student writes
                 "tests": ["test_decay_first_steps", ...],       # the tests that grade it
                 "reference": ["reference_impl.training.ema"],   # the course's own version
                 "equivalents": ["diffusers.EMAModel", ...]}],   # a library's version
      "withhold": ["reference_impl.training.ema", "diffusers.training_utils"]}

and the scan finds three kinds of borrowed code:

* ``reference-import``: an import of a withheld or reference module (the jail does not offer
  the withheld ones: sandbox.py binds a stub over them, so the import fails there too);
* ``library-equivalent``: a declared equivalent (by its dotted name, through the cell's
  imports, ``getattr(mod, "name")`` and ``importlib.import_module``) used inside one of the
  declared functions of a part that lists it (elsewhere it is allowed: assignment 2's Part C
  may use ``WeightedRandomSampler``, its Part B may not);
* ``copied-reference-code``: a function whose normalised AST - identifiers renamed to
  placeholders in order of appearance, docstrings, string contents, annotations and decorators
  dropped, formatting and comments gone with the parse - equals that of a function of a
  declared reference module, with at least ``MIN_NODES`` nodes (a one-line formula the text
  dictates may coincide honestly). Functions the notebook itself gives (locked cells) are
  never matched.

``scan_source`` (one cell, the CSV's flags) uses the union of every assignment's declaration;
``part_findings`` (the whole notebook, checks.plan) follows the student's calls from each part's
functions - through helpers, not into another part's functions - and is what costs points: a
part whose code holds a finding earns 0 on its tests (checks.score), with the reason.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import importlib.util
import io
import json
import re
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIN_NODES = 40  # copy detection ignores smaller functions (see the module docstring)
ANY = "*"  # the owner of a finding that counts against every part (a cell the scan cannot read)

PATTERNS = {
    "ipython-transformers": r"input_transformers|ast_transformers|\.events\s*\.\s*register"
                            r"|register_magic|prefilter_manager|\.compile\b\s*=",
    "os._exit": r"\b_exit\s*\(|\bos\s*\.\s*(kill|abort)\b|\bsignal\s*\.\s*(signal|alarm)\b",
    "custom-exception-handler": r"set_custom_exc|custom_exceptions|excepthook|showtraceback",
    "sys.modules-tampering": r"sys\s*\.\s*modules\s*(\[[^\]]*\]\s*=(?!=)|\.\s*(update|pop|setdefault"
                             r"|clear|__setitem__))|del\s+sys\s*\.\s*modules",
    "builtins-tampering": r"__builtins__|\bimport\s+builtins|\bfrom\s+builtins\b",
    "AssertionError-redefined": r"\bAssertionError\s*=(?!=)|class\s+AssertionError\b"
                                r"|def\s+AssertionError\b",
    "testing-monkeypatch": r"\b(numpy|np|torch)\s*\.\s*testing\s*\.\s*\w+\s*=(?!=)"
                           r"|setattr\s*\(\s*(numpy|np|torch)\s*\.\s*testing",
    "frame-or-object-walking": r"_getframe|\binspect\s*\.\s*(stack|currentframe|getouterframes)"
                               r"|f_back|f_globals|f_locals|gc\s*\.\s*get_(objects|referrers)",
    "tracing-hook": r"settrace|setprofile|sys\s*\.\s*monitoring",
    "file-access-outside-submission": r"""(open|Path|listdir|scandir|glob|walk|read_text)\s*\(\s*"""
                                      r"""[rbf]*['"](/|\.\.)|solutions/|gradebook""",
    # code the scan below cannot read: a string run as code (a paste hidden in it)
    "dynamic-code": r"(?<![.\w])(exec|eval)\s*\(|\b__import__\s*\(",
}
_COMPILED = {name: re.compile(p) for name, p in PATTERNS.items()}
# Names a cell may use without importing them in that same cell (the notebooks' own imports).
COMPOUND = (ast.If, ast.Try, ast.TryStar, ast.With, ast.AsyncWith, ast.For, ast.AsyncFor,
            ast.While, ast.Match)
DEFAULT_ALIASES = {"torch": "torch", "np": "numpy", "numpy": "numpy", "dist": "torch.distributed",
                   "math": "math", "importlib": "importlib"}


def _code_only(source: str) -> str:
    """Source without comments (strings kept: paths hide in strings), IPython magics kept."""
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type != tokenize.COMMENT]
        return tokenize.untokenize(toks)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source


def scan_source(source: str) -> list[str]:
    """Flags for one cell's source: bypass patterns, then code the student did not write."""
    code = _code_only(source)
    found = [name for name, rx in _COMPILED.items() if rx.search(code)]
    decl = course_declaration()
    scope = {f for p in decl["parts"] for f in p["functions"]}
    for f in analyse([source], decl)[0]:
        if f.kind != "library-equivalent" or (f.owner in scope and any(
                f.owner in p["functions"] and f.what in p["equivalents"] for p in decl["parts"])):
            found.append(f.flag())
    return list(dict.fromkeys(found))


# ---- declarations ---------------------------------------------------------------------------

def declaration(nb) -> dict:
    """An assignment's declaration from its source notebook (empty parts if it has none), with
    ``given``: fingerprints of the functions its locked cells define (never a copy)."""
    raw = nb.get("metadata", {}).get("autograder", {}) or {}
    parts = [{"name": str(p.get("name", "")),
              **{k: [str(x) for x in p.get(k, [])]
                 for k in ("functions", "tests", "reference", "equivalents")}}
             for p in raw.get("parts", [])]
    given = set()
    for c in nb.get("cells", []):
        meta = c.get("metadata", {}).get("nbgrader", {})
        if c.get("cell_type") == "code" and not meta.get("solution") and not meta.get("grade"):
            given |= {_hash(fp) for _, fp, _ in _functions(_parse(_text(c.get("source", ""))))}
    return {"parts": parts, "withhold": [str(m) for m in raw.get("withhold", [])],
            "given": sorted(given)}


@lru_cache(maxsize=4)
def course_declaration(course: str = str(REPO)) -> dict:
    """The union of every assignment's declaration under ``course/solutions``."""
    parts, withhold, given = [], set(), set()
    for path in sorted(Path(course, "solutions").glob("*/*.ipynb")):
        try:
            d = declaration(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        parts += d["parts"]
        withhold |= set(d["withhold"])
        given |= set(d["given"])
    return {"parts": parts, "withhold": sorted(withhold), "given": sorted(given)}


def module_file(name: str) -> Path | None:
    """The file of module ``a.b.c`` (``a/b/c.py``), found without importing anything."""
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not rest:
        return Path(spec.origin) if spec is not None and spec.origin and not rest else None
    p = Path(spec.origin).parent.joinpath(*rest[:-1]) / f"{rest[-1]}.py"
    return p if p.is_file() else None


# ---- normalised functions -------------------------------------------------------------------

_IDENT_FIELDS = {ast.Name: ("id",), ast.arg: ("arg",), ast.FunctionDef: ("name",),
                 ast.AsyncFunctionDef: ("name",), ast.ClassDef: ("name",),
                 ast.alias: ("name", "asname"), ast.ExceptHandler: ("name",),
                 ast.ImportFrom: ("module",)}


class _Strip(ast.NodeTransformer):
    """Docstrings and bare string statements, decorators, annotations and the contents of
    strings (f-strings included): gone, before any name is counted."""

    def generic_visit(self, node):
        node = super().generic_visit(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.decorator_list = []
            if not isinstance(node, ast.ClassDef):
                node.returns = None
        if isinstance(node, ast.arg):
            node.annotation = None
        if isinstance(node, ast.AnnAssign):
            node.annotation = ast.Constant(None)
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                kept = [s for s in body if not (isinstance(s, ast.Expr) and
                                                isinstance(s.value, ast.Constant) and
                                                isinstance(s.value.value, str))]
                setattr(node, field, kept or [ast.Pass()])
        return node

    def visit_JoinedStr(self, node):
        return ast.Constant("")

    def visit_Constant(self, node):
        return ast.Constant("") if isinstance(node.value, (str, bytes)) else node


def fingerprint(fn) -> tuple[str, int]:
    """(normalised dump, node count) of a function definition: names renamed to _0, _1, ...
    and attributes to a0, a1, ... in order of appearance (two namespaces: ``self.decay = decay``
    and ``me.top = d`` are the same code), keyword names dropped; see ``_Strip`` for the rest."""
    fn = _Strip().visit(copy.deepcopy(fn))
    names: dict[str, str] = {}
    attrs: dict[str, str] = {}
    for n in ast.walk(fn):
        for field in _IDENT_FIELDS.get(type(n), ()):
            v = getattr(n, field, None)
            if isinstance(v, str):
                setattr(n, field, names.setdefault(v, f"_{len(names)}"))
        if isinstance(n, (ast.Global, ast.Nonlocal)):
            n.names = [names.setdefault(v, f"_{len(names)}") for v in n.names]
        if isinstance(n, ast.Attribute):
            n.attr = attrs.setdefault(n.attr, f"a{len(attrs)}")
        if isinstance(n, ast.keyword) and n.arg is not None:
            n.arg = "k"
    return ast.dump(fn, include_attributes=False), sum(1 for _ in ast.walk(fn))


def _hash(fp: str) -> str:
    return hashlib.sha1(fp.encode()).hexdigest()


def _functions(tree, prefix: str = "") -> list[tuple[str, str, int]]:
    """(qualified name, fingerprint, nodes) of every function in ``tree``, methods included."""
    out = []
    for node in ast.iter_child_nodes(tree) if tree is not None else ():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((prefix + node.name, *fingerprint(node)))
            out += _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            out += _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.stmt):
            out += _functions(node, prefix)
    return out


@lru_cache(maxsize=64)
def _module_functions(path: str, mtime: float) -> tuple[tuple[str, str, int], ...]:
    return tuple(_functions(_parse(Path(path).read_text())))


def reference_index(modules, given=()) -> dict[str, str]:
    """{fingerprint: "module.Qual.name"} of the modules' functions worth comparing."""
    index, skip = {}, set(given)
    for m in modules:
        p = module_file(m)
        if p is None:
            continue
        for qual, fp, nodes in _module_functions(str(p), p.stat().st_mtime):
            if nodes >= MIN_NODES and _hash(fp) not in skip:
                index.setdefault(fp, f"{m}.{qual}")
    return index


# ---- the analysis ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    kind: str  # reference-import | library-equivalent | copied-reference-code | unreadable-code
    owner: str | None  # the top-level name whose code holds it (None: a top-level statement)
    what: str  # the module, the declared equivalent, or the reference function
    where: str  # the student's function (qualified) or the bound name

    def flag(self) -> str:
        if self.kind == "copied-reference-code":
            return f"{self.kind} ({self.where} = {self.what})"
        if self.kind in ("library-equivalent", "unreadable-code"):
            return f"{self.kind} ({self.what} in {self.where})"
        return f"{self.kind} ({self.what})"


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source)


def _parse(source: str):
    """The cell's AST, or None for a cell Python cannot compile (it defines nothing when run)."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass
    try:  # IPython magics (%timeit, !ls): the harness runs cells through IPython
        from IPython.core.inputtransformer2 import TransformerManager

        return ast.parse(TransformerManager().transform_cell(source))
    except Exception:  # noqa: BLE001 - a cell that does not parse defines nothing
        return None


def _dotted(node, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` through the imports (``dist.all_reduce`` -> ``torch.distributed.all_reduce``),
    ``getattr(x, "name")`` included; None if the root is not an imported name."""
    attrs = []
    while True:
        if isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id == "getattr" and len(node.args) >= 2 and \
                isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            attrs.append(node.args[1].value)
            node = node.args[0]
        elif isinstance(node, ast.Name) and aliases.get(node.id):
            return ".".join([aliases[node.id], *reversed(attrs)])
        else:
            return None


def _under(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _imports(node) -> list[tuple[str, str | None]]:
    """(imported dotted name, bound name) of an import statement or a constant dynamic import."""
    if isinstance(node, ast.Import):
        return [(a.name, a.asname or a.name.split(".")[0]) for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [(f"{node.module}.{a.name}", a.asname or a.name) for a in node.names] + \
               [(node.module, None)]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
            isinstance(node.args[0].value, str):
        f = node.func
        if (isinstance(f, ast.Name) and f.id in ("__import__", "import_module")) or \
                (isinstance(f, ast.Attribute) and f.attr == "import_module"):
            return [(node.args[0].value, None)]
    return []


def _bind(aliases: dict, node) -> None:
    """Record the names an import statement binds."""
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                aliases[a.asname] = a.name
            else:
                top = a.name.split(".")[0]
                aliases[top] = top
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        for a in node.names:
            aliases[a.asname or a.name] = f"{node.module}.{a.name}"


def _definitions(tree):
    """(statement, names it binds or None) for the top-level statements; a compound statement
    (if, try, with, for, while, match, their async forms) is opened up: its header comes as a
    statement of its own, binding nothing, then the statements of its bodies."""
    for node in tree.body if tree is not None else ():
        body = _bodies(node)
        if body is None:
            yield node, _owners(node)
        else:
            yield node, None
            yield from _definitions(ast.Module(body=body, type_ignores=[]))


def _bodies(node) -> list | None:
    """The statements inside a compound statement other than a def or class (None: not one)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return None
    inner = [s for f in ("body", "orelse", "finalbody") for s in getattr(node, f, None) or []]
    inner += [s for h in getattr(node, "handlers", None) or [] for s in h.body]
    inner += [s for c in getattr(node, "cases", None) or [] for s in c.body]
    return inner if inner or isinstance(node, COMPOUND) else None


def _header(node) -> list:
    """The parts of an if/for/while/with/try outside its body (its body comes separately)."""
    out = []
    for f in ("test", "iter", "target", "items", "subject"):
        v = getattr(node, f, None)
        out += v if isinstance(v, list) else [v] if v is not None else []
    return out


def _owners(node) -> list[str] | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [b for _, b in _imports(node) if b]
    return None


def analyse(sources: list[str], decl: dict) -> tuple[list[Finding], dict[str, set[str]]]:
    """(findings, graph) over cells in notebook order. ``graph``: top-level name -> the names
    its code loads (a def's body, an assignment's value)."""
    trees = [_parse(_text(s)) for s in sources]
    aliases = dict(DEFAULT_ALIASES)
    for tree in trees:  # module-level imports of every cell (a later cell may import)
        for node, _ in _definitions(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                _bind(aliases, node)
    withheld = set(decl["withhold"]) | {m for p in decl["parts"] for m in p["reference"]}
    equivalents = sorted({e for p in decl["parts"] for e in p["equivalents"]}, key=len,
                         reverse=True)
    index = reference_index(sorted({m for p in decl["parts"] for m in p["reference"]}),
                            decl.get("given", ()))
    findings, graph = [], {}
    for k, tree in enumerate(trees):
        try:
            _analyse_tree(tree, aliases, withheld, equivalents, index, findings, graph)
        except RecursionError:  # parses, but nested too deeply for this scan: fail closed
            findings.append(Finding("unreadable-code", ANY, "nested too deeply to scan",
                                    f"cell {k}"))
    return list(dict.fromkeys(findings)), graph


def _analyse_tree(tree, aliases, withheld, equivalents, index, findings, graph) -> None:
    """One cell's statements: their names' edges in ``graph``, their ``findings``."""
    for node, owners in _definitions(tree):
        scope = [node] if _bodies(node) is None else _header(node)
        owner = owners[0] if owners else None
        for name in owners or ():
            graph.setdefault(name, set()).update(
                n.id for s in scope for n in ast.walk(s)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))
        local = dict(aliases)
        for s in scope:
            for n in ast.walk(s):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    _bind(local, n)
        for s in scope:
            findings += _scan_node(s, owner, local, withheld, equivalents, index)


def _scan_node(node, owner, aliases, withheld, equivalents, index) -> list[Finding]:
    out = []
    where = owner or "a top-level statement"
    for n in ast.walk(node):
        for name, bound in _imports(n):
            bound = bound if n is node else None  # an import inside a def binds a local name
            for m in withheld:
                if _under(name, m):
                    out.append(Finding("reference-import", bound or owner, m, where))
            for e in equivalents:
                if _under(name, e):
                    out.append(Finding("library-equivalent", bound or owner, e,
                                       f"the import of {bound}" if bound else where))
                    break
        if isinstance(n, (ast.Attribute, ast.Name, ast.Call)) and \
                isinstance(getattr(n, "ctx", ast.Load()), ast.Load):
            name = _dotted(n, aliases)
            if name and "." in name:
                for e in equivalents:
                    if _under(name, e):
                        out.append(Finding("library-equivalent", owner, e, where))
                        break
                for m in withheld:
                    if _under(name, m):
                        out.append(Finding("reference-import", owner, m, where))
    if index and isinstance(node, ast.stmt):
        for qual, fp, _ in _functions(ast.Module(body=[node], type_ignores=[])):
            if fp in index:
                out.append(Finding("copied-reference-code", owner, index[fp], qual))
    return out


def closure(graph: dict[str, set[str]], start, stop=()) -> set[str]:
    """Names reachable from ``start`` through the graph, not entering ``stop``."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [n for n in graph.get(name, ()) if n not in seen and n not in stop]
    return seen


def part_findings(sources: list[str], decl: dict) -> list[list[Finding]]:
    """For each declared part: the findings in the code its functions reach."""
    findings, graph = analyse(sources, decl)
    out = []
    for p in decl["parts"]:
        others = {f for q in decl["parts"] if q is not p for f in q["functions"]} - \
            set(p["functions"])
        reach = closure(graph, p["functions"], others)
        out.append([f for f in findings if (f.owner in reach or f.owner == ANY) and
                    (f.kind != "library-equivalent" or f.what in p["equivalents"])])
    return out
