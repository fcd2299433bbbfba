#!/usr/bin/env python3
"""Summarises `go test -json` results of the apiserver storage suite.

usage: gotest_summary.py RESULTS_DIR BACKEND...

Reads RESULTS_DIR/<backend>.json for each backend, counts top-level tests
and subtests as passed / failed / skipped, and writes RESULTS_DIR/summary.md.
When etcd (the baseline) is among the backends, every test that passed on
etcd must pass on each Koine backend (sqlite, postgres, mysql): the exit
status is 1 otherwise, and the differences are listed. kine's results are
reported, never judged. A test that passed on etcd but did not run at all
counts as failed.
"""

import json
import os
import sys

KOINE = ("sqlite", "postgres", "mysql")


def load(path):
    """{(package, test): action} with the final action of every test."""
    results = {}
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            test = ev.get("Test")
            action = ev.get("Action")
            if test and action in ("pass", "fail", "skip"):
                results[(ev.get("Package", ""), test)] = action
    return results


def counts(results, top_level):
    c = {"pass": 0, "fail": 0, "skip": 0}
    for (_, test), action in results.items():
        if ("/" in test) != (not top_level):
            continue
        c[action] += 1
    return c


def main():
    out_dir, backends = sys.argv[1], sys.argv[2:]
    data = {b: load(os.path.join(out_dir, b + ".json")) for b in backends}
    lines = [
        "| backend | top-level passed | failed | skipped | with subtests passed | failed | skipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in backends:
        r = data[b]
        if r is None:
            lines.append(f"| {b} | not run | | | | | |")
            continue
        t, s = counts(r, True), counts(r, False)
        lines.append(
            f"| {b} | {t['pass']} | {t['fail']} | {t['skip']} | "
            f"{t['pass'] + s['pass']} | {t['fail'] + s['fail']} | {t['skip'] + s['skip']} |"
        )
    status = 0
    base = data.get("etcd")
    for b in backends:
        r = data[b]
        if r is None:
            continue
        failed = sorted(k for k, a in r.items() if a == "fail")
        if base is not None and b != "etcd":
            regressions = sorted(
                k for k, a in base.items() if a == "pass" and r.get(k) != "pass"
            )
            if regressions:
                lines.append("")
                lines.append(f"Passed on etcd, not on {b} ({len(regressions)}):")
                lines += [f"- {p} {t}: {r.get((p, t), 'did not run')}" for p, t in regressions]
                if b in KOINE:
                    status = 1
        elif failed:
            lines.append("")
            lines.append(f"Failed on {b} ({len(failed)}):")
            lines += [f"- {p} {t}" for p, t in failed]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    sys.stdout.write(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
