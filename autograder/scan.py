"""Static scan of student code for known test-bypass tricks: flags for the instructor only.

Grading no longer depends on anything the student's interpreter does (the hidden checks are
compared on the trusted side, checks.py), so these tricks cannot earn points; the scan only
tells the instructor who tried one. A flagged cell is run like any other (nothing is
neutralised: an honest cell that happens to match costs nothing), and the flag goes in the
CSV's ``flags`` column.
"""
from __future__ import annotations

import io
import re
import tokenize

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
}
_COMPILED = {name: re.compile(p) for name, p in PATTERNS.items()}


def _code_only(source: str) -> str:
    """Source without comments (strings kept: paths hide in strings), IPython magics kept."""
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type != tokenize.COMMENT]
        return tokenize.untokenize(toks)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source


def scan_source(source: str) -> list[str]:
    """Names of the bypass patterns found in one cell's source."""
    code = _code_only(source)
    return [name for name, rx in _COMPILED.items() if rx.search(code)]

