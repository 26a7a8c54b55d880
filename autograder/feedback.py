"""Feedback HTML for one student and assignment, built from trusted data only.

* Each autograded test shows its name, its points and the message the trusted side wrote
  (checks.py): the kind of failure, never a hidden input or expected value.
* The student's cells and what they printed in the *feedback run* are shown HTML-escaped; an
  image only if it is valid PNG, re-encoded (driver.clean_png: text chunks and metadata gone);
  HTML, JavaScript and other rich outputs are never pasted in.
* Instructor cells are shown as the release has them (the hidden regions never leave the
  trusted side, so no student output can contain them), and the hidden-check run's output is
  never collected at all.
"""
from __future__ import annotations

import html
import re

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")
B64 = re.compile(r"^[A-Za-z0-9+/=]+$")


def _esc(text: str) -> str:
    return html.escape(ANSI.sub("", str(text)), quote=True)


def _outputs(cell: dict) -> str:
    parts = []
    for o in cell["outputs"]:
        if o["kind"] == "image":
            if B64.match(o["png"]):  # our own re-encoding: base64 only, checked again
                parts.append(f'<img alt="plot" src="data:image/png;base64,{o["png"]}">')
        else:
            parts.append(f'<pre class="{_esc(o["kind"])}">{_esc(o["text"])}</pre>')
    return "".join(parts)


def render(student: str, assignment: str, graded: list[dict], row: dict) -> str:
    """The whole page. ``graded``: driver results, one per notebook."""
    body = [f"<h1>{_esc(assignment)}: feedback for {_esc(student)}</h1>",
            (f"<p>Total so far: <b>{row['total']:g}</b> of {row['max_total']:g}"
             f" ({row['max_auto']:g} autograded; manual parts: {_esc(row['manual_status'])})</p>"),
            "<p class='how'>Points come only from the grader's own checks of your functions "
            "(hidden inputs, compared outside your notebook). The visible tests in your "
            "notebook are a help, not the grade.</p>"]
    for key in ("flags", "notes"):
        if row[key]:
            body.append(f"<h3>{key}</h3><ul>" + "".join(
                f"<li>{_esc(x)}</li>" for x in row[key].split("; ")) + "</ul>")
    summary = []
    for g in graded:
        for gid, res in g["results"].items():
            if res["kind"] == "auto":
                ok = res["points"] == res["max"]
                summary.append(f'<tr class="{"pass" if ok else "fail"}"><td>{_esc(gid)}</td>'
                               f'<td>{res["points"]:g} / {res["max"]:g}</td>'
                               f'<td>{_esc(res.get("message", ""))}</td></tr>')
    if summary:
        body.append("<h2>Autograded tests</h2><table><tr><th>test</th><th>points</th>"
                    "<th>grader's message</th></tr>" + "".join(summary) + "</table>")
    for g in graded:
        body.append(f"<h2>{_esc(g['notebook'])}</h2>")
        for cell in g["cells"]:
            gid = cell["grade_id"]
            res = g["results"].get(gid) if gid else None
            head = ""
            if res and res["kind"] == "auto":
                ok = res["points"] == res["max"]
                ran = {"ok": "ran without error", "error": "raised an error",
                       "timeout": "timed out"}.get(cell["status"], "did not run")
                head = (f'<div class="{"pass" if ok else "fail"}">test <b>{_esc(gid)}</b>: '
                        f'{res["points"]:g} / {res["max"]:g} - {_esc(res.get("message", ""))}'
                        f'<br><small>the visible part in your notebook {ran} (not graded)'
                        f'</small></div>')
            elif res and res["kind"] == "manual":
                pts = "needs manual grade" if res["points"] is None else f"{res['points']:g}"
                head = (f'<div class="manual">manually graded <b>{_esc(gid)}</b>: '
                        f'{pts} / {res["max"]:g}</div>')
            body.append(f'<div class="cell">{head}<pre class="src {_esc(cell["cell_type"])}">'
                        f'{_esc(cell["source"])}</pre>{_outputs(cell)}</div>')
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}"
             ".cell{border-left:3px solid #ccc;margin:1em 0;padding-left:.5em}"
             ".pass{color:#060}.fail{color:#a00}.manual{color:#a60}"
             "pre.error,pre.stderr{background:#fee}pre.src{background:#f6f6f6}"
             "td{padding:0 .5em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{_esc(assignment)}</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>")
