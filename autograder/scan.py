"""Static scan of student code for known ways to fake a passing test.

Each pattern names a trick that has been used against notebook autograders: rewriting the
cells that come after (IPython ``input_transformers``, AST transformers, custom exception
handlers), killing the kernel so later test cells leave no error (``os._exit``), swapping
modules or builtins the tests rely on (``sys.modules``, ``__builtins__``, ``AssertionError``,
``numpy.testing``/``torch.testing``), and reading files outside the submission.

Policy (see README.md): a flagged cell is *neutralised* - replaced by a comment before the
notebook runs - so it can never earn points; the flag and the reason go into the CSV for the
instructor, who can re-grade by hand (``python -m autograder manual``). The scan is the first
line of defence; canary cells (driver.py) catch obfuscated variants at run time.
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


def neutralise(source: str, reasons: list[str]) -> str:
    """What a flagged cell becomes: a comment saying why it did not run."""
    return ("# autograder: this cell was not run, it matched known test bypasses: "
            + ", ".join(reasons) + "\n")
