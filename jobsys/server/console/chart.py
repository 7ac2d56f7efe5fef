"""A job's progress over time as an inline SVG chart, drawn on the server.

The per-minute rollup (`job_minutes`) is summed into the tasks done, failed
and lost by the end of each minute, drawn as stacked areas under the job's
total. Drawn here rather than by the page's script: the page needs no
charting library, the chart is there without JavaScript, and an SVG made
of attributes (no style attribute, no script) passes the console's
Content-Security-Policy. A long job is drawn with at most MAX_POINTS points
(minutes grouped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup, escape

from jobsys.api.overview import Minute, Progress

WIDTH = 640
HEIGHT = 180
LEFT = 64  # room for the y labels
BOTTOM = 22  # room for the x labels
TOP = 8
RIGHT = 8
MAX_POINTS = 240
KINDS = ("done", "failed", "lost")
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Point:
    """What was finished by `at`."""

    at: datetime
    done: int
    failed: int
    lost: int

    def upto(self, kind: str) -> int:
        """The stacked height of `kind`: itself and the kinds drawn under it."""
        return sum(getattr(self, k) for k in KINDS[: KINDS.index(kind) + 1])


def grouped(minutes: list[Minute], most: int = MAX_POINTS) -> list[Minute]:
    """`minutes` summed into at most `most` groups of consecutive rows (the time of
    each group is that of its last minute)."""
    if len(minutes) <= most:
        return minutes
    size = math.ceil(len(minutes) / most)
    out = []
    for i in range(0, len(minutes), size):
        chunk = minutes[i : i + size]
        out.append(Minute(chunk[-1].minute, sum(m.done for m in chunk),
                          sum(m.failed for m in chunk), sum(m.lost for m in chunk)))  # fmt: skip
    return out


def points(progress: Progress, start: datetime, end: datetime) -> list[Point]:
    """Cumulative counts from `start` to `end`, one point per (grouped) minute."""
    b = progress.before
    done, failed, lost = b.done, b.failed, b.lost
    out = [Point(start, done, failed, lost)]
    for m in grouped(progress.minutes):
        done, failed, lost = done + m.done, failed + m.failed, lost + m.lost
        at = min(max(m.minute + MINUTE, start), end)
        out.append(Point(at, max(done, 0), max(failed, 0), max(lost, 0)))
    out.append(Point(end, max(done, 0), max(failed, 0), max(lost, 0)))
    return out


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _label_time(at: datetime, span: timedelta) -> str:
    return at.strftime("%m-%d %H:%M" if span > timedelta(days=1) else "%H:%M:%S")


def progress_chart(progress: Progress, total: int, start: datetime, end: datetime) -> Markup:
    """The chart of a job's progress from `start` (its start) to `end` (its end, or now)."""
    if end <= start:
        end = start + timedelta(seconds=1)
    pts = points(progress, start, end)
    top = max(total, *(p.upto("lost") for p in pts), 1)
    span = end - start
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM

    def x(at: datetime) -> float:
        return LEFT + plot_w * (at - start) / span

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    shapes = []
    below = [0] * len(pts)
    for kind in KINDS:
        upper = [p.upto(kind) for p in pts]
        line = [f"{_fmt(x(p.at))},{_fmt(y(v))}" for p, v in zip(pts, upper, strict=True)]
        base = [f"{_fmt(x(p.at))},{_fmt(y(v))}" for p, v in zip(pts, below, strict=True)]
        polygon = " ".join(line + base[::-1])
        shapes.append(f'<polygon class="area-{kind}" points="{polygon}"><title>{kind}</title>'
                      "</polygon>")  # fmt: skip
        below = upper
    last = pts[-1]
    labels = [
        (LEFT - 6, TOP + 4, "end", f"{top:,}"),
        (LEFT - 6, HEIGHT - BOTTOM, "end", "0"),
        (LEFT, HEIGHT - 6, "start", _label_time(start, span)),
        (WIDTH - RIGHT, HEIGHT - 6, "end", _label_time(end, span)),
    ]
    texts = "".join(
        f'<text x="{_fmt(lx)}" y="{_fmt(ly)}" text-anchor="{anchor}">{escape(text)}</text>'
        for lx, ly, anchor, text in labels
    )
    summary = (
        f"done {last.done:,}, failed {last.failed:,}, lost {last.lost:,} of {total:,} "
        f"from {start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC"
    )
    svg = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(summary)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(summary)}</title>"
        f'<line class="axis" x1="{LEFT}" y1="{_fmt(y(0))}" x2="{WIDTH - RIGHT}" y2="{_fmt(y(0))}"/>'
        f'<line class="total" x1="{LEFT}" y1="{_fmt(y(total))}" x2="{WIDTH - RIGHT}" '
        f'y2="{_fmt(y(total))}"/>' + "".join(shapes) + texts + "</svg>"
    )
    return Markup(svg)
