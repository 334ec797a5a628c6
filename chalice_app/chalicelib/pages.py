"""The two HTML pages a browser sees: the index with its form, and a verdict.

Every value placed in a page goes through `html.escape`; the pages load nothing from
elsewhere (the picture is an inline data: thumbnail), which the CSP header enforces.
"""

from __future__ import annotations

import html
from string import Template
from typing import Any

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
input[type=url] { width: 100%; padding: .4rem; }
.verdict { font-size: 2rem; margin: .5rem 0; }
.meta { color: #555; font-size: .9rem; }
img { max-width: 256px; border-radius: .3rem; }
"""

_LAYOUT = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title><style>$style</style></head>
<body>$body</body></html>
""")

_INDEX = Template("""<h1>Is it a cat?$heading</h1>
<form id="url-form" method="get" action="$action">
  <p><label>Picture URL<br><input type="url" name="image" required
     placeholder="https://example.com/cat.jpeg"></label></p>
  <p><button type="submit">Ask</button></p>
</form>
<form id="upload">
  <p><label>&hellip;or upload a picture (JPEG, PNG, GIF, WebP)<br>
     <input type="file" id="file" accept="image/jpeg,image/png,image/gif,image/webp"></label></p>
  <p><button type="submit">Upload</button></p>
</form>
<p class="meta">$model</p>
<script>
document.getElementById("upload").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("file").files[0];
  if (!file) return;
  const response = await fetch(document.getElementById("url-form").action, {
    method: "POST", body: file,
    headers: {"Content-Type": file.type || "application/octet-stream", "Accept": "text/html"}});
  const text = await response.text();
  if ((response.headers.get("Content-Type") || "").startsWith("text/html")) {
    document.open(); document.write(text); document.close();
  } else {
    alert(JSON.parse(text).error || text);
  }
});
</script>
""")

_VERDICT = Template("""<h1>Is it a cat?$heading</h1>
<p><img src="$thumbnail" alt="the picture"></p>
<p class="verdict">$label</p>
<p>probability of cat: $probability</p>
<p class="meta">$source<br>$model</p>
<p><a href="$home">Ask again</a></p>
""")


def _model_line(summary: dict[str, Any] | None, stage: str) -> str:
    if summary is None:
        return (
            "No model has been trained yet."
            if stage == "production"
            else "No candidate model is in staging yet."
        )
    accuracy = summary.get("test_accuracy")
    shown = f"{accuracy:.0%}" if isinstance(accuracy, int | float) else "unknown"
    return (
        f"Model {summary.get('run_id')} ({summary.get('stage') or stage}), trained "
        f"{summary.get('trained_at')}, test accuracy {shown}."
    )


def _heading(stage: str) -> str:
    return "" if stage == "production" else f" ({html.escape(stage)})"


def _page(title: str, body: str) -> str:
    return _LAYOUT.substitute(title=html.escape(title), style=_STYLE, body=body)


def index_page(model: dict[str, Any] | None, stage: str, action: str = "image") -> str:
    """The form; `action`: where it sends the picture (relative to the page, or absolute)."""
    body = _INDEX.substitute(
        heading=_heading(stage),
        action=html.escape(action, quote=True),
        model=html.escape(_model_line(model, stage)),
    )
    return _page("itsacat" if stage == "production" else f"itsacat ({stage})", body)


def verdict_page(
    verdict: dict[str, Any], thumbnail: str, source: str, stage: str, home: str = "./"
) -> str:
    label = str(verdict["label"])
    body = _VERDICT.substitute(
        heading=_heading(stage),
        home=html.escape(home, quote=True),
        thumbnail=html.escape(thumbnail, quote=True),
        label=html.escape(label),
        probability=html.escape(f"{verdict['probability']:.3f}"),
        source=html.escape(source),
        model=html.escape(_model_line(verdict.get("model"), stage)),
    )
    return _page(f"itsacat: {label}", body)
