"""The QA report a physicist files: one HTML page and a PNG trend chart per axis.

    files = write_report(results, Path("qa-report"))   # results: igrtd's qa_results, any order

`results` are stored QA results as igrtd answers `qa_results` (newest first or
not: they are sorted by time here). Each has a time (`at`: epoch seconds or
ISO 8601), `passed`, and `checks`, each `{name, axis, value, limit, unit,
passed}` (safety.qa.Check as JSON), at the top level or under `result`.

The page holds every number as text, in cells that say what they are
(`data-check`, `data-axis`, `data-field`), so a test or a script reads the
report itself rather than trusting that a file exists:

* the latest result: each check's value, limit, unit and PASS/FAIL;
* per axis, a trend chart (values over time, the tolerance band shaded,
  failures marked) and the same numbers as a table;
* the last failures, newest first.

Pillow only (no plotting library), as imaging/plots.py. No I/O beyond
writing into `out_dir`.
"""

from __future__ import annotations

import html
import itertools
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image, ImageDraw

# Translations first, then rotations, then anything else by name.
AXIS_ORDER = ("vector", "x", "y", "z", "lat", "long", "vert", "yaw", "pitch", "roll")
LAST_FAILURES = 20
W, H = 760, 360
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 170, 30, 48
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75),
           (227, 119, 194)]
FAIL = (214, 39, 40)
BAND = (222, 242, 222)


@dataclass(frozen=True, slots=True)
class CheckRow:
    """One check of one stored result."""

    at: float  # epoch seconds
    result_id: str
    by: str
    profile: str
    name: str
    axis: str
    value: float
    limit: float
    unit: str
    passed: bool
    # Shown and charted, never a failure: the imaging-isocentre offset per axis (the
    # check is on its length, iso_coincidence "vector").
    info: bool = False


@dataclass(frozen=True, slots=True)
class ResultRow:
    at: float
    result_id: str
    kind: str
    by: str
    profile: str
    passed: bool
    checks: tuple[CheckRow, ...]


@dataclass(slots=True)
class ReportFiles:
    html: Path
    charts: dict[str, Path] = field(default_factory=dict)  # axis -> PNG
    results: int = 0
    failures: int = 0


# ------------------------------------------------------------------ reading results
def _epoch(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"time {value!r} is not a time")  # noqa: TRY004 - bad input
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"time {value!r} is not finite")
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"time {value!r} is neither epoch seconds nor ISO 8601") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    raise ValueError(f"time {value!r} is neither epoch seconds nor ISO 8601")


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is not a finite number: {value!r}")
    return float(value)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def read_result(raw: Mapping[str, object]) -> ResultRow:
    """One stored result as rows; ValueError (one line) naming what is missing."""
    inner = raw.get("result")
    body: Mapping[str, object] = inner if isinstance(inner, Mapping) else raw

    def pick(key: str) -> object:
        return raw.get(key) if raw.get(key) is not None else body.get(key)

    at_raw = pick("at")
    if at_raw is None:
        at_raw = pick("finished_at") if pick("finished_at") is not None else pick("time")
    if at_raw is None:
        raise ValueError("a QA result without a time (at)")
    at = _epoch(at_raw)
    rid = _text(pick("id"))
    by = _text(pick("by"))
    profile_raw = pick("profile")
    profile = _text(profile_raw.get("name") if isinstance(profile_raw, Mapping) else profile_raw)
    checks_raw = body.get("checks")
    if not isinstance(checks_raw, list):
        raise ValueError(f"QA result {rid or '?'}: no list of checks")  # noqa: TRY004
    checks = []
    for k, c in enumerate(checks_raw):
        if not isinstance(c, Mapping):
            raise ValueError(  # noqa: TRY004 - a bad stored result, not a bad call
                f"QA result {rid or '?'}: check {k} is not an object")
        name = _text(c.get("name"))
        checks.append(CheckRow(
            at=at, result_id=rid, by=by, profile=profile, name=name, axis=_text(c.get("axis")),
            value=_number(c.get("value"), f"check {name} value"),
            limit=_number(c.get("limit"), f"check {name} limit"), unit=_text(c.get("unit")),
            passed=bool(c.get("passed"))))
    iso = body.get("iso_offset_mm")
    if isinstance(iso, list) and len(iso) == 3:
        vector = next((c for c in checks if c.name == "iso_coincidence"), None)
        limit = vector.limit if vector is not None else math.nan
        for axis, v in zip("xyz", iso):
            checks.append(CheckRow(at=at, result_id=rid, by=by, profile=profile,
                                   name="iso_offset", axis=axis,
                                   value=_number(v, f"iso_offset_mm {axis}"), limit=limit,
                                   unit="mm", passed=True, info=True))
    passed_raw = pick("passed")
    passed = bool(passed_raw) if passed_raw is not None else all(c.passed for c in checks)
    return ResultRow(at=at, result_id=rid, kind=_text(pick("kind")) or "daily", by=by,
                     profile=profile, passed=passed, checks=tuple(checks))


def _axis_key(axis: str) -> tuple[int, str]:
    return (AXIS_ORDER.index(axis) if axis in AXIS_ORDER else len(AXIS_ORDER), axis)


# ------------------------------------------------------------------ charts
def _fmt_time(t: float) -> str:
    return time.strftime("%m-%d %H:%M", time.gmtime(t))


def _dashed(d: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float],
            colour: tuple[int, int, int]) -> None:
    n = max(1, int(math.hypot(b[0] - a[0], b[1] - a[1]) // 6))
    for k in range(0, n, 2):
        p0 = (a[0] + (b[0] - a[0]) * k / n, a[1] + (b[1] - a[1]) * k / n)
        p1 = (a[0] + (b[0] - a[0]) * (k + 1) / n, a[1] + (b[1] - a[1]) * (k + 1) / n)
        d.line([p0, p1], fill=colour, width=1)


def trend_png(axis: str, rows: Sequence[CheckRow], path: Path) -> None:
    """Values of every check of `axis` over time; the tolerance band (+-limit of the
    latest result) shaded, each check's limit dashed in its colour, failures as red X."""
    if not rows:
        raise ValueError(f"axis {axis}: nothing to plot")
    names = sorted({r.name for r in rows})
    ts = [r.at for r in rows]
    t0, t1 = min(ts), max(ts)
    if t1 - t0 < 1.0:
        t0, t1 = t0 - 3600.0, t1 + 3600.0
    finite = [r.limit for r in rows if math.isfinite(r.limit)]
    span_y = max(max(abs(r.value) for r in rows), *finite, 1e-3) * 1.25
    # Magnitudes (positioning, repeatability, the offset's length) from 0; signed values
    # (the offset per axis) about 0.
    signed = any(r.value < 0 for r in rows) or all(r.info for r in rows)
    y0, y1 = (-span_y if signed else -0.05 * span_y), span_y
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    left, top, right, bottom = MARGIN_L, MARGIN_T, W - MARGIN_R, H - MARGIN_B

    def xy(t: float, v: float) -> tuple[float, float]:
        return (left + (t - t0) / (t1 - t0) * (right - left),
                bottom - (v - y0) / (y1 - y0) * (bottom - top))

    latest = max(rows, key=lambda r: r.at)
    band = min((r.limit for r in rows if r.at == latest.at and math.isfinite(r.limit)),
               default=math.nan)
    if math.isfinite(band):
        d.rectangle([xy(t0, band), xy(t1, -band if signed else 0.0)], fill=BAND)
    d.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    _, zy = xy(t0, 0.0)
    d.line([(left, zy), (right, zy)], fill=(160, 160, 160))
    unit = latest.unit
    for k in range(5):
        v = y0 + k * (y1 - y0) / 4
        _, py = xy(t0, v)
        d.line([(left - 4, py), (left, py)], fill=(0, 0, 0))
        d.text((4, py - 6), f"{v:+8.2f}", fill=(0, 0, 0))
        t = t0 + k * (t1 - t0) / 4
        px, _ = xy(t, y0)
        d.line([(px, bottom), (px, bottom + 4)], fill=(0, 0, 0))
        d.text((px - 30, bottom + 6), _fmt_time(t), fill=(0, 0, 0))
    d.text(((left + right) / 2 - 40, bottom + 24), "time (UTC)", fill=(0, 0, 0))
    d.text((4, 8), unit, fill=(0, 0, 0))
    tolerance = (f" (green: within the tolerance, {'+-' if signed else '<= '}{band:g} {unit})"
                 if math.isfinite(band) else "")
    d.text((left + 10, 8), f"axis {axis}: QA trend{tolerance}", fill=(0, 0, 0))
    for k, name in enumerate(names):
        colour = COLOURS[k % len(COLOURS)]
        mine = sorted((r for r in rows if r.name == name), key=lambda r: r.at)
        pts = [xy(r.at, r.value) for r in mine]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for r, p in zip(mine, pts):
            if r.passed:
                d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)
            else:
                d.line([(p[0] - 5, p[1] - 5), (p[0] + 5, p[1] + 5)], fill=FAIL, width=2)
                d.line([(p[0] - 5, p[1] + 5), (p[0] + 5, p[1] - 5)], fill=FAIL, width=2)
        limited = [r for r in mine if math.isfinite(r.limit)]
        for sign in ((1.0, -1.0) if signed else (1.0,)) if limited else ():
            lim = [xy(r.at, sign * r.limit) for r in limited]
            if len(lim) == 1:
                lim = [xy(t0, sign * limited[0].limit), xy(t1, sign * limited[0].limit)]
            for a, b in itertools.pairwise(lim):
                _dashed(d, a, b, colour)
        d.text((right + 10, top + 16 * k), f"{name}", fill=colour)
    d.text((right + 10, top + 16 * len(names) + 8), "X: failed", fill=FAIL)
    img.save(str(path))


# ------------------------------------------------------------------ HTML
CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: left; }
td.num { text-align: right; font-family: monospace; }
.pass { color: #1a7f1a; font-weight: bold; }
.fail { color: #c62828; font-weight: bold; }
img { border: 1px solid #ccc; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _verdict(passed: bool, info: bool = False) -> str:
    if info:
        return '<span class="info">info</span>'
    return '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'


def _num(c: CheckRow, field_name: str, value: float) -> str:
    return (f'<td class="num" data-check="{_e(c.name)}" data-axis="{_e(c.axis)}" '
            f'data-field="{field_name}">{value:.3f}</td>')


def _checks_table(checks: Iterable[CheckRow], table_id: str, with_time: bool) -> list[str]:
    head = "<th>time</th><th>result</th><th>by</th>" if with_time else ""
    out = [f'<table id="{_e(table_id)}">',
           (f"<tr>{head}<th>check</th><th>axis</th><th>value</th><th>limit</th><th>unit</th>"
            "<th>verdict</th></tr>")]
    for c in checks:
        cells = (f'<td data-field="at" data-epoch="{c.at:.3f}">{_e(_iso(c.at))}</td>'
                 f"<td>{_e(c.result_id)}</td><td>{_e(c.by)}</td>") if with_time else ""
        kind = "info" if c.info else "pass" if c.passed else "fail"
        out.append(f'<tr class="{kind}-row">{cells}'
                   f"<td>{_e(c.name)}</td><td>{_e(c.axis)}</td>"
                   f"{_num(c, 'value', c.value)}{_num(c, 'limit', c.limit)}"
                   f"<td>{_e(c.unit)}</td><td>{_verdict(c.passed, c.info)}</td></tr>")
    out.append("</table>")
    return out


def write_report(results: Iterable[Mapping[str, object]], out_dir: Path, *,
                 room: str | None = None, last_failures: int = LAST_FAILURES,
                 now: float | None = None) -> ReportFiles:
    """index.html and trend-<axis>.png in `out_dir` (created); ValueError for a result
    that cannot be read, or for no results at all. Aborted runs (`aborted`: true: no
    measurement to show, never a pass) are counted, not charted."""
    listed = list(results)
    aborted = [r for r in listed if r.get("aborted") is True]
    rows = sorted((read_result(r) for r in listed if r.get("aborted") is not True),
                  key=lambda r: r.at)
    if not rows:
        raise ValueError(f"no completed QA results to report ({len(aborted)} aborted)")
    if room is None:
        room = next((str(r["room"]) for r in listed if isinstance(r.get("room"), str)), None)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(html=out_dir / "index.html", results=len(rows))
    by_axis: dict[str, list[CheckRow]] = {}
    for r in rows:
        for c in r.checks:
            by_axis.setdefault(c.axis, []).append(c)
    axes = sorted(by_axis, key=_axis_key)
    for axis in axes:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in axis) or "none"
        path = out_dir / f"trend-{safe}.png"
        trend_png(axis, by_axis[axis], path)
        files.charts[axis] = path
    failures = [c for r in reversed(rows) for c in r.checks if not c.passed and not c.info]
    files.failures = len(failures)
    latest = rows[-1]
    generated = time.time() if now is None else now
    title = f"igrt QA report{f' - room {room}' if room else ''}"
    page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            (f'<p>Generated <span id="generated">{_e(_iso(generated))}</span> from '
             f'<span id="result-count">{len(rows)}</span> stored QA results, '
             f"{_e(_iso(rows[0].at))} to {_e(_iso(latest.at))}. "
             f'Passed: <span id="passed-count">{sum(r.passed for r in rows)}</span>, '
             f'failed: <span id="failed-count">{sum(not r.passed for r in rows)}</span>; '
             f'<span id="aborted-count">{len(aborted)}</span> aborted runs not shown.</p>'),
            "<h2>Latest result</h2>",
            (f'<p id="latest" data-result="{_e(latest.result_id)}">{_e(latest.kind)} QA '
             f"{_e(latest.result_id)} at {_e(_iso(latest.at))} by {_e(latest.by)}, profile "
             f"{_e(latest.profile)}: {_verdict(latest.passed)}</p>")]
    page += _checks_table(latest.checks, "latest-checks", with_time=False)
    page.append("<h2>Last failures</h2>")
    if failures:
        page.append(f"<p>The last {min(len(failures), last_failures)} of {len(failures)} "
                    "failed checks, newest first.</p>")
        page += _checks_table(failures[:last_failures], "last-failures", with_time=True)
    else:
        page.append('<p id="last-failures">No failed check in these results.</p>')
    page.append("<h2>Trends per axis</h2>")
    for axis in axes:
        png = files.charts[axis].name
        page.append(f'<h3 id="axis-{_e(axis)}">Axis {_e(axis)}</h3>')
        page.append(f'<p><img src="{_e(png)}" width="{W}" height="{H}" '
                    f'alt="trend of axis {_e(axis)}"></p>')
        page += _checks_table(by_axis[axis], f"trend-{axis}", with_time=True)
    page.append("<h2>How to read this report</h2><p>Each value is what the QA run measured "
                "(docs/qa.md says how); the limit is the tolerance of the profile that run "
                "used. A trend that walks toward its limit needs attention before it "
                "fails.</p>")
    page.append("</body></html>")
    files.html.write_text("\n".join(page) + "\n", encoding="utf-8")
    return files
