#!/usr/bin/env python3
"""Sums `perf script` call stacks (on stdin) by engine component.

A sample belongs to the component of the innermost frame of its stack that names one (so the
malloc, memmove or syscall a SQLite insert makes counts as the store's); a stack that names
none goes to the generic bucket of its innermost frame (allocation, the async runtime, the
kernel's network or the rest). Prints a table of shares of the sampled CPU time, largest first,
and, on stderr, the hottest innermost symbols of each component to check the patterns."""
import re
import sys
from collections import Counter, defaultdict

COMPONENTS = [
    ("embedded store (SQLite writer and reads)", ["sqlite3", "rusqlite", "engine::store", "pcache1", "btree", "Btree", "Vdbe", "vdbe"]),
    ("MQTT transport (ntex, codec, connection core)", ["ntex", "engine::transport::mqtt"]),
    ("device sessions, ingress and hand-off (actors)", ["actors::session", "actors::ingress", "actors::device_keys", "ractor"]),
    ("payload parsing (JSON)", ["actors::protocol", "serde_json", "actors::payload"]),
    ("queue, rule chains, sink", ["actors::queue", "engine::queue", "actors::rules", "actors::sink", "actors::batch", "actors::rule"]),
    ("CoAP and HTTP transports", ["engine::transport::coap", "engine::transport::http", "actix"]),
]
GENERIC = [
    ("memory allocation and copies (not attributed)", ["malloc", "free", "realloc", "_int_", "unlink_chunk", "memmove", "memcpy", "memset", "alloc::"]),
    ("async runtime (tokio)", ["tokio::", "mio::", "futures"]),
    ("kernel: network", ["tcp_", "ip_", "sock_", "skb", "inet_", "loopback", "net_rx", "netif", "dev_queue"]),
]

frame_re = re.compile(r"^\s+[0-9a-f]+\s+(.*?)(?:\+0x[0-9a-f]+)?\s+\((.*)\)\s*$")
shares = Counter()
top = defaultdict(Counter)
total = 0


def classify(frames):
    for sym, _ in frames:
        for name, patterns in COMPONENTS:
            if any(p in sym for p in patterns):
                return name
    if not frames:
        return "other"
    leaf, dso = frames[0]
    for name, patterns in GENERIC:
        if any(p in leaf for p in patterns):
            return name
    if "kernel" in dso:
        return "kernel: files, scheduling and the rest"
    return "other"


def flush(frames):
    global total
    if frames is None:
        return
    name = classify(frames)
    shares[name] += 1
    top[name][frames[0][0] if frames else "?"] += 1
    total += 1


frames = None
for line in sys.stdin:
    if not line.strip():
        flush(frames)
        frames = None
        continue
    if not line[0].isspace():
        flush(frames)
        frames = []
        continue
    m = frame_re.match(line)
    if m and frames is not None:
        frames.append((m.group(1), m.group(2)))
flush(frames)

print(f"| component ({total} samples) | share of engine CPU |")
print("| --- | ---: |")
for name, n in shares.most_common():
    print(f"| {name} | {100 * n / max(total, 1):.1f} % |")
for name, syms in top.items():
    for sym, n in syms.most_common(5):
        print(f"{name:44.44} {100 * n / max(total, 1):6.2f}%  {sym[:100]}", file=sys.stderr)
