"""Markdown tables for docs/performance.md from `quorate bench --format json`
outputs (one file per backend, one JSON object per scenario per line).

Usage: perf_tables.py BACKEND=FILE.jsonl ...   -> Markdown on stdout.
"""

import json
import sys


def load(path):
    return {r["scenario"]: r for r in (json.loads(l) for l in open(path) if l.strip())}


def f(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def main():
    runs = [(a.split("=", 1)[0], load(a.split("=", 1)[1])) for a in sys.argv[1:]]
    out = []
    out.append("### Latency and throughput, ratio to the raw client in the same run\n")
    out.append("| backend | uncontended p50 (raw) | ratio | hand-off p50 (raw) | ratio | one lock ops/s (raw) | ratio | many locks ops/s (raw) | ratio |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for b, r in runs:
        u, h, t1, tm = (r.get(k, {}) for k in ("uncontended", "handoff", "throughput_one_lock", "throughput_many_locks"))
        out.append(
            f"| {b} | {f(u.get('p50_us'))} µs ({f(u.get('raw_p50_us'))}) | {f(u.get('ratio'), 2)} "
            f"| {f(h.get('p50_us'))} µs ({f(h.get('raw_p50_us'))}) | {f(h.get('ratio'), 2)} "
            f"| {f(t1.get('ops_per_s'), 0)} ({f(t1.get('raw_ops_per_s'), 0)}) | {f(t1.get('ratio'), 2)} "
            f"| {f(tm.get('ops_per_s'), 0)} ({f(tm.get('raw_ops_per_s'), 0)}) | {f(tm.get('ratio'), 2)} |"
        )
    out.append("")
    out.append("### `requests_per_op`: server-side requests, from the server's own counters\n")
    out.append("| backend | per uncontended acquire + release: quorate / raw | per hand-off cycle (quorate) | hand-off extra (cycle − 2 × uncontended) | raw hand-off | quorate uncontended, by kind |")
    out.append("|---|---|---|---|---|---|")
    for b, r in runs:
        q = r.get("requests_per_op")
        if not q:
            continue
        kinds = ", ".join(f"{k} {v:.2g}" for k, v in sorted(q.get("breakdown", {}).get("uncontended", {}).items()))
        extra = ""
        if "uncontended_scripts" in q:
            extra = f" ({f(q['uncontended_scripts'], 0)} scripts, {f(q.get('uncontended_server_us'))} µs server vs {f(q.get('raw_uncontended_server_us'), 2)} µs)"
        out.append(
            f"| {b} | {f(q['uncontended_requests'], 2)} / {f(q['raw_uncontended_requests'], 2)}{extra} "
            f"| {f(q['handoff_cycle_requests'], 2)} | {f(q['handoff_extra_requests'], 2)} | {f(q['raw_handoff_requests'], 2)} | {kinds} |"
        )
    out.append("")
    out.append("### `held_10k`: one session holds 10 000 locks\n")
    out.append("| backend | acquire_total_ms | release_total_ms | rss_bytes_per_lock | keep-alive requests per TTL (0 locks) | keep-alive server µs per TTL (0 locks) | keep-alive client µs (0 locks) |")
    out.append("|---|---|---|---|---|---|---|")
    for b, r in runs:
        x = r.get("held_10k")
        if not x:
            continue
        out.append(
            f"| {b} | {f(x.get('acquire_total_ms'), 0)} | {f(x.get('release_total_ms'), 0)} | {f(x.get('rss_bytes_per_lock'), 0)} "
            f"| {f(x.get('keepalive_requests_per_ttl'), 0)} ({f(x.get('keepalive_requests_per_ttl_0_locks'), 0)}) "
            f"| {f(x.get('keepalive_server_us_per_ttl'), 0)} ({f(x.get('keepalive_server_us_per_ttl_0_locks'), 0)}) "
            f"| {f(x.get('keepalive_client_us'), 0)} ({f(x.get('keepalive_client_us_0_locks'), 0)}) |"
        )
    out.append("")
    out.append("### `waiters_1000`: 1 000 waiters (one session each) on one lock\n")
    out.append("| backend | threads (before) | rss_bytes_per_waiter | drain_ms | fifo_inversions (against) | arrival inversions | arrival spacing |")
    out.append("|---|---|---|---|---|---|---|")
    for b, r in runs:
        x = r.get("waiters_1000")
        if not x:
            continue
        out.append(
            f"| {b} | {f(x.get('threads'), 0)} ({f(x.get('threads_before'), 0)}) | {f(x.get('rss_bytes_per_waiter'), 0)} "
            f"| {f(x.get('drain_ms'), 0)} | {f(x.get('fifo_inversions'), 0)} "
            f"({'listed queue' if x.get('queue_listed') == 1 else 'arrival'}) "
            f"| {f(x.get('arrival_inversions'), 0)} | {f(x.get('arrival_spacing_us', 0) / 1000, 1)} ms |"
        )
    print("\n".join(out))


if __name__ == "__main__":
    main()
