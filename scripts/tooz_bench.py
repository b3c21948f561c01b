"""tooz's side of scripts/bench-vs-tooz: p50/p99 of an uncontended
acquire + release and of a hand-off (the holder's release() to the waiter's
acquire() returning), measured like `quorate bench` measures quorate.

Usage: tooz_bench.py TOOZ_URL SECONDS  -> one JSON object on stdout.
"""

import json
import statistics
import sys
import threading
import time
import uuid

from tooz import coordination


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def coordinator(url):
    c = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
    c.start(start_heart=True)
    return c


def main():
    url, seconds = sys.argv[1], float(sys.argv[2])
    a, b = coordinator(url), coordinator(url)
    name = ("bench-" + uuid.uuid4().hex).encode()
    try:
        lock = a.get_lock(name + b"-u")
        samples = []
        start = time.monotonic()
        while (time.monotonic() - start < seconds or len(samples) < 5) and len(samples) < 10000:
            t = time.perf_counter()
            if not lock.acquire(blocking=True):
                raise RuntimeError("uncontended acquire failed")
            lock.release()
            samples.append((time.perf_counter() - t) * 1e6)
        unc = samples

        held, waiting = a.get_lock(name + b"-h"), b.get_lock(name + b"-h")
        samples = []
        start = time.monotonic()
        while (time.monotonic() - start < seconds or len(samples) < 5) and len(samples) < 500:
            if not held.acquire(blocking=True):
                raise RuntimeError("holder acquire failed")
            got = {}

            def wait():
                waiting.acquire(blocking=True)
                got["t"] = time.perf_counter()

            th = threading.Thread(target=wait)
            th.start()
            time.sleep(0.005)
            released = time.perf_counter()
            held.release()
            th.join()
            waiting.release()
            samples.append((got["t"] - released) * 1e6)
        hand = samples
    finally:
        for c in (a, b):
            try:
                c.stop()
            except Exception:  # noqa: BLE001 - best effort at the end of a benchmark
                pass
    print(json.dumps({
        "url": url.split("?")[0],
        "tooz_uncontended_p50_us": pct(unc, 50),
        "tooz_uncontended_p99_us": pct(unc, 99),
        "tooz_uncontended_samples": len(unc),
        "tooz_handoff_p50_us": pct(hand, 50),
        "tooz_handoff_p99_us": pct(hand, 99),
        "tooz_handoff_samples": len(hand),
        "tooz_handoff_mean_us": statistics.mean(hand),
    }))


if __name__ == "__main__":
    main()
