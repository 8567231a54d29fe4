"""A self-contained HTML page of search results (thumbnails inlined as data URIs).

A video hit shows the picture of its best moment and plays the video from
that moment (a ``#t=SECONDS`` media fragment on the file's URL); its other
good moments are links to their times.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Mapping, Sequence

from .errors import MMSearchError
from .search import Hit

THUMB_SIDE = 256


def _thumbnail_data_uri(path: str, time: float | None = None) -> str | None:
    """A JPEG data URI of the picture (or of the video at ``time`` seconds); None when it cannot be read now."""
    if time is not None:
        from .errors import VideoDecodeError
        from .video import frame_at

        try:
            img = frame_at(path, time, min_side=THUMB_SIDE)
        except (VideoDecodeError, ValueError):
            return None
    else:
        from .loading import load_image

        loaded = load_image(path, min_side=THUMB_SIDE)
        if loaded.image is None:
            return None
        img = loaded.image
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _video_card(hit: Hit, score: str) -> str:
    """A video at its moment: the moment's picture as the poster, playing from that time."""
    from .video_files import format_clock, format_seconds

    assert hit.path is not None and hit.time is not None
    uri = _thumbnail_data_uri(hit.path, hit.time)
    base = Path(hit.path).as_uri()
    src = html.escape(f"{base}#t={format_seconds(hit.time)}", quote=True)
    name = html.escape(os.path.basename(hit.path))
    poster = f' poster="{uri}"' if uri else ""
    others = [m for m in (hit.moments or [])[1:] if m.get("time") is not None]
    links = " ".join(
        '<a href="{}">{}</a>'.format(html.escape(f"{base}#t={format_seconds(m['time'])}", quote=True),
                                     format_clock(m["time"]))
        for m in others
    )
    more = f"<br><span class=\"moments\">also at {links}</span>" if links else ""
    return (
        f'<figure class="video"><video controls preload="none" src="{src}"{poster}></video>'
        f'<figcaption>{score} &middot; at <a href="{src}">{format_clock(hit.time)}</a><br>'
        f'<span title="{html.escape(hit.path, quote=True)}">{name}</span>{more}</figcaption></figure>'
    )


def render_results_page(hits: Sequence[Hit], title: str, heatmaps: Mapping[int, str] | None = None) -> str:
    """The page as a string: a grid of thumbnails (images) and cards (texts) with rank and score.

    ``heatmaps`` (``{hit id: image URI}``, e.g. from
    :func:`retrieval.explain_report.heatmap_uris`) puts each hit's heatmap beside its thumbnail.
    """
    heatmaps = heatmaps or {}
    cards = []
    for hit in hits:
        score = f"#{hit.rank} &middot; {hit.score:.3f}"
        if hit.path is not None and hit.kind == "video" and hit.time is not None:
            cards.append(_video_card(hit, score))
        elif hit.path is not None:
            uri = _thumbnail_data_uri(hit.path)
            href = html.escape(Path(hit.path).as_uri(), quote=True)
            name = html.escape(os.path.basename(hit.path))
            picture = (
                f'<img src="{uri}" alt="{name}" loading="lazy">' if uri else '<div class="missing">no preview</div>'
            )
            why = heatmaps.get(hit.id)
            if why is not None:  # issue 21: the heatmap beside the thumbnail
                picture = (f'<span class="pair">{picture}<img src="{html.escape(why, quote=True)}" '
                           f'alt="why {name} matched" title="why it matched" loading="lazy"></span>')
            explained = ' class="explained"' if why is not None else ""
            cards.append(
                f'<figure{explained}><a href="{href}">{picture}</a><figcaption>{score}<br>'
                f'<span title="{html.escape(hit.path, quote=True)}">{name}</span></figcaption></figure>'
            )
        else:
            cards.append(f'<figure class="text"><p>{html.escape(hit.text or "")}</p><figcaption>{score}</figcaption></figure>')
    body = "\n".join(cards) or "<p>No results.</p>"
    legend = ('<p class="legend">Beside each picture: why it matched. Red pulls it towards the query, blue '
              'pushes it away; shaded parts were outside what the model saw.</p>\n' if heatmaps else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
h1 {{ font-size: 1.2rem; font-weight: 600; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; background: #fff; border-radius: 8px; box-shadow: 0 1px 3px #0002; overflow: hidden; }}
figure img, figure video {{ width: 100%; height: 200px; object-fit: cover; display: block; background: #000; }}
figure.text p {{ padding: .8rem; margin: 0; min-height: 4rem; }}
figcaption {{ padding: .4rem .6rem; font-size: .8rem; color: #555; word-break: break-all; }}
.missing {{ height: 200px; display: grid; place-items: center; color: #999; }}
figure.explained {{ grid-column: span 2; }}
.pair {{ display: grid; grid-template-columns: 1fr 1fr; gap: 2px; }}
.pair img {{ object-fit: contain; background: #eee; }}
.legend {{ color: #555; font-size: .9rem; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
{legend}<main>
{body}
</main>
</body>
</html>
"""


def write_results_page(hits: Sequence[Hit], path: str | os.PathLike[str], title: str,
                       heatmaps: Mapping[int, str] | None = None) -> Path:
    """Write the page atomically and return its path; ``MMSearchError`` says why it cannot be written.

    ``heatmaps``: see :func:`render_results_page`.
    """
    out = Path(path)
    if out.is_dir():
        raise MMSearchError(f"--html {out} is a folder: give a file name, e.g. {out / 'results.html'}")
    if not out.parent.is_dir():
        raise MMSearchError(f"--html {out}: the folder {out.parent} does not exist")
    page = render_results_page(hits, title, heatmaps).encode("utf-8", "backslashreplace")  # a non-UTF-8 name stays readable
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_bytes(page)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MMSearchError(f"cannot write --html {out}: {exc.strerror or exc}") from exc
    return out
