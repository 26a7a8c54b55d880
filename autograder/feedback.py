"""Feedback HTML for one student and assignment, with the hidden tests removed.

The student sees their own cells with outputs, each test as the release shows it, whether it
passed, its points, and the error's type and message. Lines of a traceback (or message) that
repeat a hidden-test line are replaced by ``[hidden test line]``.
"""
from __future__ import annotations

import html
import re

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# IPython traceback code lines look like "----> 12 assert x" or "     13 y = f()".
TB_CODE = re.compile(r"^\s*(-*>)?\s*\d+\s(.*)$")


def redact(text: str, hidden: list[str]) -> str:
    """Replace every line that shows a hidden-test line."""
    hidden_set = {h for h in hidden if h}
    out = []
    for line in ANSI.sub("", text).splitlines():
        m = TB_CODE.match(line)
        code = (m.group(2) if m else line).strip()
        if code and (code in hidden_set or any(len(h) >= 12 and h in line for h in hidden_set)):
            out.append("[hidden test line]")
        else:
            out.append(line)
    return "\n".join(out)


def _outputs(cell: dict, hidden: list[str]) -> str:
    parts = []
    for o in cell["outputs"]:
        kind = o.get("output_type")
        if kind == "stream":
            parts.append((o.get("name"), o.get("text", "")))
        elif kind == "error":
            tb = "\n".join(o.get("traceback", [])) or f"{o.get('ename')}: {o.get('evalue')}"
            parts.append(("error", tb))
        elif kind in ("execute_result", "display_data"):
            data = o.get("data", {})
            if "image/png" in data:
                parts.append(("image", data["image/png"]))
            elif "text/plain" in data:
                parts.append(("result", data["text/plain"]))
    html_parts = []
    for kind, text in parts:
        if isinstance(text, list):
            text = "".join(text)
        if kind == "image":
            html_parts.append(f'<img src="data:image/png;base64,{text.strip()}">')
        else:
            shown = redact(text, hidden)
            html_parts.append(f'<pre class="{kind}">{html.escape(shown)}</pre>')
    return "".join(html_parts)


def render(student: str, assignment: str, graded: list[dict], row: dict) -> str:
    """The whole page. ``graded``: driver results, one per notebook.

    Every output is redacted against every hidden line of its notebook: student code can
    see the test cells it runs with (e.g. through ``inspect``) and print them later.
    """
    body = [f"<h1>{html.escape(assignment)}: feedback for {html.escape(student)}</h1>",
            (f"<p>Total so far: <b>{row['total']:g}</b> of {row['max_total']:g}"
             f" ({row['max_auto']:g} autograded; manual parts: {row['manual_status']})</p>")]
    for key in ("flags", "notes"):
        if row[key]:
            body.append(f"<h3>{key}</h3><ul>" + "".join(
                f"<li>{html.escape(x)}</li>" for x in row[key].split("; ")) + "</ul>")
    for g in graded:
        hidden = sorted({ln for cell in g["cells"] for ln in cell["hidden"]})
        body.append(f"<h2>{html.escape(g['notebook'])}</h2>")
        for cell in g["cells"]:
            gid = cell["grade_id"]
            res = g["results"].get(gid) if gid else None
            head = ""
            if res and res["kind"] == "auto":
                ok = res["points"] == res["max"]
                msg = "" if ok else f" - {res['ename']}: {redact(res['evalue'], hidden)}"
                head = (f'<div class="{"pass" if ok else "fail"}">test <b>{html.escape(gid)}</b>: '
                        f'{res["points"]:g} / {res["max"]:g}{html.escape(msg)}</div>')
            elif res and res["kind"] == "manual":
                pts = "needs manual grade" if res["points"] is None else f"{res['points']:g}"
                head = (f'<div class="manual">manually graded <b>{html.escape(gid)}</b>: '
                        f'{pts} / {res["max"]:g}</div>')
            src = redact(cell["source"], hidden) if cell["test"] else cell["source"]
            body.append(f'<div class="cell">{head}<pre class="src {cell["cell_type"]}">'
                        f'{html.escape(src)}</pre>{_outputs(cell, hidden)}</div>')
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}"
             ".cell{border-left:3px solid #ccc;margin:1em 0;padding-left:.5em}"
             ".pass{color:#060}.fail{color:#a00}.manual{color:#a60}"
             "pre.error,pre.stderr{background:#fee}pre.src{background:#f6f6f6}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(assignment)}"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")
