"""A self-contained HTML page: inline CSS, images as data URIs, no scripts, fonts or links out."""
from __future__ import annotations

import base64
from html import escape

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
figure { display: inline-block; margin: .5em 1em .5em 0; } figcaption { font-size: .8em; color: #555; }
pre { background: #f7f7f7; padding: .6em; font-size: .8em; max-height: 24em; overflow: auto; }
.note { color: #666; font-style: italic; } nav a { margin-right: 1em; }
"""


def image(png: bytes, alt: str, caption: str | None = None) -> str:
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    tag = f'<img src="{src}" alt="{escape(alt)}">'
    return f"<figure>{tag}<figcaption>{escape(caption)}</figcaption></figure>" if caption else tag


def number(value: float) -> str:
    """Four decimals (accuracies, losses), but small values such as learning rates and weight
    decays to three significant digits: 0.00015, not 0.0001."""
    return f"{value:.3g}" if value and abs(value) < 0.01 else f"{value:.4f}"


def cell(value) -> str:
    if isinstance(value, float):
        return f'<td class="num">{number(value)}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{escape('' if value is None else str(value))}</td>"


def table(headers: list[str], rows: list[list], css_class: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def preformatted(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def page(title: str, body: str) -> str:
    # The empty icon keeps the browser from asking for /favicon.ico (an error on file:// pages).
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{STYLE}</style></head>'
            f"<body>{body}</body></html>\n")
