"""Self-contained HTML report: the metrics table plus every figure base64-embedded, so one file can be mailed."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from starmd.evaluation.summary import COLUMNS
from starmd.io import atomic_path


def write_html(path: Path, rows: list[dict], n_proteins: int, figures: list[tuple[Path, str]],
               notes: list[str]) -> None:
    """Write `path` with a table of `rows` and each (PNG, caption) in `figures` as a data: URI image."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(f'{r[c]:.3f}' if isinstance(r[c], float) else str(r[c]))}"
                                    f"</td>" for c in COLUMNS) + "</tr>\n" for r in rows)
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>starmd evaluation report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;text-align:right}figure{margin:1.5em 0}"
        "img{max-width:100%}</style></head><body>",
        "<h1>starmd evaluation report</h1>",
        f"<p>Median over {n_proteins} protein(s); definitions in README.md (Metrics). <em>oracle_not_separated</em> "
        "counts proteins where the MD oracle does not beat that trivial baseline.</p>",
        f"<table id=\"metrics\"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>",
    ]
    parts += [f"<p class=\"note\">{html.escape(n)}</p>" for n in notes]
    for png, caption in figures:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<figure id=\"{html.escape(png.stem)}\"><img alt=\"{html.escape(png.name)}\" "
                     f"src=\"data:image/png;base64,{data}\"><figcaption>{html.escape(png.name)}: "
                     f"{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts))
