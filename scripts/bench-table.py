#!/usr/bin/env python3
"""Renders the results.json files palisade-bench wrote under DIR as the
markdown table of docs/benchmarks.md (numbers are copied, never typed)."""
import json, os, sys


def auth(a):
    """The run's request authentication (older results said only whether clients signed)."""
    if "request_auth" in a:
        return a["request_auth"]
    return "signatures" if a.get("client_signatures") else "trust-primary"

root = sys.argv[1]
rows = []
meta = None
revisions = {}
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "results.json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    meta = meta or r
    revisions.setdefault(r["git_revision"], []).append(name)
    a = r["args"]
    for lvl in r["levels"]:
        p = lvl["palisade"]
        l = p["latency"]
        cpu = sum(x["cpu_percent"] for x in lvl["replicas"])
        rss = max([x["peak_rss_mib"] for x in lvl["replicas"]] or [0])
        ratio = r["baseline_ratio"]
        base = r["baseline"]["ops_per_sec"] if r.get("baseline") else None
        ops = p["ops_per_sec"]
        rep = r.get("repeat")
        if rep and rep.get("ops_per_sec") and len(r["levels"]) == 1:
            ops = rep["ops_per_sec"]["median"]
        if rep and rep.get("baseline_ratio"):
            # Repeated runs: the medians, and the ratio's spread pair by pair.
            x = rep["baseline_ratio"]
            ratio_text = "{:.3f} ({:.3f}-{:.3f}, {} runs)".format(x["median"], x["min"], x["max"], len(rep["rows"]))
            base = rep["baseline_ops_per_sec"]["median"]
        else:
            ratio_text = "{:.3f}".format(ratio) if ratio else "-"
        rows.append("| {} | {} n={} | {}/{} | {} | {}x{} | {:,.0f} | {} | {} | {} | {} | {} | {:.0f}% | {:.0f} |".format(
            name, a["mode"].upper(), a["replicas"], a["request_bytes"], a["reply_bytes"],
            auth(a), lvl["level"]["clients"], lvl["level"]["outstanding"],
            ops, l["p50_us"], l["p99_us"],
            "{:,.0f}".format(base) if base else "-", ratio_text,
            "{:.1f}".format(lvl["mean_batch_size"]) if lvl.get("mean_batch_size") else "-",
            cpu, rss))
if meta:
    revs = "; ".join("{} ({})".format(rev, ", ".join(names)) for rev, names in revisions.items()) if len(revisions) > 1 \
        else next(iter(revisions))
    print("Machine: {} cores, {}; git revision {}; {} s per run after a 3 s warm-up.".format(
        meta["cores"], meta["cpu_model"], revs, meta["args"]["duration"]))
print()
print("| run | cluster | req/reply B | request auth | load | ops/s | p50 us | p99 us | baseline ops/s | ratio | batch | replica CPU (sum) | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
