"""Self-contained HTML pages (inline CSS, inline SVG figures, base64 PNG examples; no scripts, no
network) rendered from the report dict and from a leaderboard.

Every number cell carries ``data-key`` and ``data-value`` (the exact stored fraction), so the page
can be checked against ``report.json``.
"""

from __future__ import annotations

from html import escape
from typing import Any

from metaat.eval import plots
from metaat.eval.report import (
    checks_summary,
    fmt_pct,
    headline_rows,
    leaderboard_columns,
    points_text,
    protocol_text,
    training_text,
    unseen_rows,
)

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; color: #1d1d1f;
       background: #f7f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.6rem; margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 8px 0; background: white; }
th, td { border: 1px solid #ddd; padding: 4px 10px; font-size: 0.9rem; vertical-align: top; }
th { background: #eef0f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.banner { padding: 10px 14px; border-radius: 6px; margin: 14px 0; font-weight: 600; }
.banner.ok { background: #e3f4e6; color: #1e6b2e; } .banner.bad { background: #fde5e5; color: #9b1c1c; }
.status-passed { color: #1e6b2e; } .status-flagged { color: #9b1c1c; font-weight: 700; }
.status-skipped { color: #777; }
svg.figure { max-width: 100%; height: auto; background: white; display: block; }
.figure-box { background: white; border: 1px solid #ddd; padding: 8px; margin: 8px 0; }
.examples { display: flex; flex-wrap: wrap; gap: 14px; }
.example { background: white; border: 1px solid #ddd; padding: 6px; font-size: 0.8rem; }
.example .text { max-width: 420px; margin: 4px 0; }
.example mark { background: #f7d794; }
.example img { width: 84px; height: 84px; image-rendering: pixelated; border: 1px solid #ccc; margin: 2px; }
"""


def _num(key: str, value: float | None, upper: bool = False) -> str:
    data = "" if value is None else f' data-value="{value!r}"'
    return f'<td class="num" data-key="{escape(key)}"{data}>{escape(fmt_pct(value, upper))}</td>'


def _page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body><main>\n" + "\n".join(body) + "\n</main></body></html>\n"
    )


def _figure(svg: str | None, caption: str) -> list[str]:
    if svg is None:
        return []
    return [f'<div class="figure-box">{svg}<div class="meta">{escape(caption)}</div></div>']


def _examples(report: dict[str, Any]) -> list[str]:
    if not report.get("examples"):
        return []
    out = [
        "<h2>Adversarial examples</h2>",
        '<p class="meta">clean · adversarial · perturbation (rescaled to its own maximum, grey = 0)</p>',
        '<div class="examples">',
    ]
    for e in report["examples"]:
        verdict = "fooled" if e["adversarial_prediction"] != e["label"] else "robust"
        if "tokens_adversarial" in e:
            view = _marked_text(e["tokens_clean"], e["tokens_adversarial"])
            size = f"{int(e['perturbation_norm'])} token(s) changed"
        else:
            view = (
                f'<img alt="clean" src="data:image/png;base64,{escape(e["clean_png"])}">'
                f'<img alt="adversarial" src="data:image/png;base64,{escape(e["adversarial_png"])}">'
                f'<img alt="perturbation" src="data:image/png;base64,{escape(e["perturbation_png"])}">'
            )
            size = f"norm {e['perturbation_norm']:.3g}"
        out.append(
            f'<div class="example"><div>{escape(e["threat"])} · point {e["index"]} · label {e["label"]}</div>'
            f"{view}<div>prediction {e['clean_prediction']} → {e['adversarial_prediction']} ({verdict}), "
            f"{size}</div></div>"
        )
    out.append("</div>")
    return out


def _marked_text(clean: list[str], adversarial: list[str]) -> str:
    """The clean and the adversarial text, escaped, with the changed tokens in ``<mark>``."""
    marked = [
        f"<mark>{escape(str(tok))}</mark>" if i >= len(clean) or tok != clean[i] else escape(str(tok))
        for i, tok in enumerate(adversarial)
    ]
    return f'<p class="text">{" ".join(escape(str(t)) for t in clean)}</p><p class="text">{" ".join(marked)}</p>'


def render_html(report: dict[str, Any]) -> str:
    """``report.html`` from the report dict."""
    m, d = report["model"], report["dataset"]
    body = [
        f"<h1>Robustness report — {escape(str(m.get('name', 'model')))}</h1>",
        f'<div class="meta">{escape(d["name"])} {escape(str(d.get("split", "test")))}, {escape(points_text(d))} · '
        f"{escape(protocol_text(report))} · model {escape(str(m.get('source')))}, "
        f"{escape(str(m.get('parameters', '?')))} parameters · training: {escape(training_text(report))}</div>",
    ]
    css = "bad" if report["flagged"] else "ok"
    body.append(f'<div class="banner {css}" id="checks-banner">{escape(checks_summary(report))}</div>')
    if report["flagged"]:
        body.append(
            "<ul>"
            + "".join(
                f"<li><b>{escape(c['name'])}{' (' + escape(c['threat']) + ')' if c.get('threat') else ''}</b>: "
                f"{escape(c['explanation'])}</li>"
                for c in report["flagged"]
            )
            + "</ul>"
        )
    body += [
        "<h2>Robust accuracy</h2>",
        '<table id="headline"><tr><th>metric</th><th>accuracy (%)</th><th>points attacked</th></tr>',
    ]
    for r in headline_rows(report):
        attacked = "—" if r["attacked"] is None else str(r["attacked"])
        body.append(
            f"<tr><td>{escape(r['label'])}</td>{_num(r['key'], r['value'], r['upper'])}"
            f'<td class="num">{attacked}</td></tr>'
        )
    body.append("</table>")
    body += _figure(plots.threat_bars(report), "clean, per-threat and union accuracy (grey: upper bound)")
    body += _figure(plots.accuracy_vs_eps(report), "robust accuracy against eps, per norm")
    attacks = report["protocol"].get("attacks", {})
    body.append(
        "<h3>Attacks per threat</h3><ul>"
        + "".join(f"<li>{escape(t)}: {escape('; '.join(names))}</li>" for t, names in attacks.items())
        + "</ul>"
    )
    urows = unseen_rows(report)
    if urows:
        body += [
            "<h2>Unseen attacks</h2>",
            '<table id="unseen"><tr><th>attack</th><th>setting</th><th>accuracy (%)</th></tr>',
        ]
        body += [
            f"<tr><td>{escape(r['section'])}</td><td>{escape(r['label'])}</td>{_num(r['key'], r['value'])}</tr>"
            for r in urows
        ]
        body.append("</table>")
    body += _examples(report)
    body.append("<h2>Gradient-masking checks</h2>")
    if report["checks"]:
        body.append('<table id="checks"><tr><th>check</th><th>threat</th><th>status</th><th>explanation</th></tr>')
        for c in report["checks"]:
            body.append(
                f"<tr><td>{escape(c['name'])}</td><td>{escape(c.get('threat') or '—')}</td>"
                f'<td class="status-{c["status"]}">{escape(c["status"])}</td>'
                f"<td>{escape(c['explanation'])}</td></tr>"
            )
        body.append("</table>")
    else:
        body.append("<p>Not run.</p>")
    body.append("<h2>Cost</h2>")
    cost = report.get("cost")
    if cost:
        body.append(
            '<table id="cost">'
            + "".join(f'<tr><th>{escape(k)}</th><td class="num">{escape(_value(v))}</td></tr>' for k, v in cost.items())
            + "</table>"
        )
    else:
        body.append("<p>No training cost recorded.</p>")
    hw = report["hardware"]
    body += [
        "<h2>Reproducibility</h2>",
        "<ul>",
        f"<li>seeds: evaluation {report['seeds']['evaluation']}, training {report['seeds']['training']}</li>",
        f"<li>hardware: {escape(str(hw.get('hardware')))}; torch {escape(str(hw.get('torch')))}, "
        f"pyautoattack {escape(str(hw.get('pyautoattack')))}, metaat {escape(str(hw.get('metaat')))}</li>",
        f"<li>timings (s): {escape(', '.join(f'{k} {v}' for k, v in _flat(report['timings']).items()))}</li>",
        f"<li>created {escape(report['created'])}</li></ul>",
    ]
    return _page(f"metaat report — {m.get('name', 'model')}", body)


def _flat(timings: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in timings.items():
        out.update({f"{k}/{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def render_leaderboard_html(board: dict[str, Any]) -> str:
    """The comparison page: leaderboard table plus cost against union robustness."""
    threats = board["threats"]
    head = leaderboard_columns(threats)
    body = [
        "<h1>Leaderboard — union robust accuracy</h1>",
        f'<div class="meta">{len(board["rows"])} runs, sorted by union robust accuracy</div>',
    ]
    if board.get("warnings"):
        body.append('<div class="banner bad">' + escape(" ".join(board["warnings"])) + "</div>")
    body.append('<table id="leaderboard"><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>")
    for rank, r in enumerate(board["rows"], 1):
        cells = [
            f'<td class="num">{rank}</td>',
            f"<td>{escape(r['run'])}</td>",
            f"<td>{escape(str(r['model']))}</td>",
            f"<td>{escape(str(r.get('defense') or '—'))}</td>",
            f"<td>{escape(str(r['dataset']))}</td>",
            f'<td class="num">{r["n"]}</td>',
            f"<td>{escape(str(r['suite']))}</td>",
            _num(f"{r['run']}/clean", r["clean"]),
        ]
        cells += [_num(f"{r['run']}/{t}", r["robust"].get(t), bool(r["upper_bound"].get(t))) for t in threats]
        cells += [
            _num(f"{r['run']}/union", r["union"]),
            f'<td class="num">{r["flagged"]}</td>',
            f'<td class="num">{_cost(r.get("passes_per_example"))}</td>',
            f'<td class="num">{_cost(r.get("seconds_per_epoch"))}</td>',
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    body.append("</table>")
    body += _figure(plots.cost_vs_union(board["rows"]), "training cost against union robust accuracy")
    return _page("metaat leaderboard", body)


def _value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cost(value: float | None) -> str:
    return "—" if value is None else escape(f"{value:.4g}")
