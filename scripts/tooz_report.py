"""Turn scripts/bench-vs-tooz's results (one JSON object per backend per
line) into a Markdown table (stdout) and an SVG bar chart (argv[2]):
quorate vs raw client vs tooz, p50 per backend, for the uncontended
acquire + release and the hand-off. Generated, never drawn by hand.

Usage: tooz_report.py RESULTS.jsonl CHART.svg
"""

import html
import json
import math
import sys


def fmt(v):
    return "–" if v is None else f"{v:,.0f} µs" if v >= 100 else f"{v:.1f} µs"


def ratio(a, b):
    return "–" if a is None or b is None or a == 0 else f"{b / a:.2f}×"


def table(rows):
    out = [
        "| backend | scenario | quorate p50 | raw p50 | tooz p50 | quorate / raw | tooz / quorate (speed-up) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for s in ("uncontended", "handoff"):
            q, raw, t = r.get(f"quorate_{s}_p50_us"), r.get(f"raw_{s}_p50_us"), r.get(f"tooz_{s}_p50_us")
            qr = "–" if q is None or raw is None else f"{q / raw:.2f}"
            out.append(f"| {r['backend']} | {s} | {fmt(q)} | {fmt(raw)} | {fmt(t)} | {qr} | {ratio(q, t)} |")
    return "\n".join(out) + "\n"


def chart(rows, path):
    series = [("quorate", "#1f77b4"), ("raw", "#7f7f7f"), ("tooz", "#d62728")]
    groups = [(r["backend"], s, r) for r in rows for s in ("uncontended", "handoff")]
    bar, gap, left, top, height = 14, 22, 170, 40, 0
    rows_h = len(groups) * (3 * bar + gap)
    height = top + rows_h + 50
    width = 820
    plot_w = width - left - 30
    vals = [g[2].get(f"{n}_{g[1]}_p50_us") for g in groups for n, _ in series]
    vals = [v for v in vals if v]
    lo = 10 ** math.floor(math.log10(min(vals)))
    hi = 10 ** math.ceil(math.log10(max(vals)))

    def x(v):
        return left + plot_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14">p50 latency, log scale (lower is better): quorate vs raw client vs tooz, same servers, one run</text>',
    ]
    d = lo
    while d <= hi:
        svg.append(f'<line x1="{x(d):.1f}" y1="{top - 5}" x2="{x(d):.1f}" y2="{top + rows_h}" stroke="#ddd"/>')
        label = f"{d / 1000:g} ms" if d >= 1000 else f"{d:g} µs"
        svg.append(f'<text x="{x(d):.1f}" y="{top + rows_h + 15}" text-anchor="middle">{label}</text>')
        d *= 10
    y = top
    for backend, scenario, r in groups:
        svg.append(f'<text x="{left - 8}" y="{y + 1.5 * bar + 4}" text-anchor="end">{html.escape(backend)} {scenario}</text>')
        for i, (n, color) in enumerate(series):
            v = r.get(f"{n}_{scenario}_p50_us")
            yy = y + i * bar
            if v:
                svg.append(f'<rect x="{left}" y="{yy}" width="{max(x(v) - left, 1):.1f}" height="{bar - 2}" fill="{color}"/>')
                svg.append(f'<text x="{x(v) + 4:.1f}" y="{yy + bar - 4}" font-size="10">{fmt(v)}</text>')
        y += 3 * bar + gap
    lx = left
    for n, color in series:
        svg.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{color}"/>')
        svg.append(f'<text x="{lx + 16}" y="{height - 12}">{n}</text>')
        lx += 90
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    sys.stdout.write(table(rows))
    chart(rows, sys.argv[2])


if __name__ == "__main__":
    main()
