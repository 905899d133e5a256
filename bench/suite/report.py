"""Results: one JSON per scenario, the goals of issue 6 with measured ratios, a markdown table, a chart.

Pure except `write_*` (which take the output directory). A goal is evaluated against every scenario it
names; a scenario that did not run shows as `not measured` with the reason, never as met.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Goal:
    """`subject` in `scenario` reaches `target` × `baseline` (requests/s), or an RSS bound (MB)."""

    text: str
    scenario: str
    subject: str
    baseline: str | None
    target: float
    # "ratio": rps(subject)/rps(baseline) >= target; "rss": peak MB <= target; "idle": after-idle delta MB <= target;
    # "gbps": the subject's request bodies in GB/s >= target
    kind: str = "ratio"
    #: judged only on a machine with this many cores (the GPU machine's goals); fewer: measured, shown, not judged
    min_cores: int = 0


GOALS: tuple[Goal, ...] = (
    Goal("sidecar ≥ 1.0× nginx, 1 KB, h1 c16", "tls-h1-1k-c16", "sidecar", "nginx", 1.0),
    Goal("sidecar ≥ 1.0× nginx, 1 KB, h1 c64", "tls-h1-1k-c64", "sidecar", "nginx", 1.0),
    Goal("sidecar ≥ 1.0× nginx, 1 KB, h2", "tls-h2-1k", "sidecar", "nginx", 1.0),
    Goal("sidecar ≥ 0.9× nginx, 600 KB, h1 c16", "tls-h1-600k-c16", "sidecar", "nginx", 0.9),
    Goal("sidecar ≥ 0.9× nginx, 600 KB, h1 c64", "tls-h1-600k-c64", "sidecar", "nginx", 0.9),
    Goal("sidecar ≥ 0.9× nginx, 600 KB, h2", "tls-h2-600k", "sidecar", "nginx", 0.9),
    Goal("pair ≥ 1.0× nginx forward chain, 1 KB c16", "pair-1k-c16", "pair", "nginx-chain", 1.0),
    Goal("pair ≥ 1.0× nginx forward chain, 1 KB c64", "pair-1k-c64", "pair", "nginx-chain", 1.0),
    Goal("pair ≥ 3× tinyproxy, 1 KB c16", "pair-1k-c16", "pair", "tinyproxy", 3.0),
    Goal("pair ≥ 3× tinyproxy, 1 KB c64", "pair-1k-c64", "pair", "tinyproxy", 3.0),
    Goal("gRPC 600 KB: pair ≥ 0.9× nginx grpc_pass", "grpc-600k", "pair", "nginx", 0.9),
    Goal("Triton 602 KB: pair ≥ 0.85× direct", "triton-602k", "pair", "direct", 0.85),
    Goal("cache-hit handshakes ≥ 0.8× nginx's (same Python client)", "handshakes", "sidecar-cache-hit", "nginx", 0.8),
    Goal("sidecar < 80 MB RSS, 64 conns × 600 KB", "pair-600k-c64", "sidecar", None, 80.0, "rss"),
    Goal("proxy < 80 MB RSS, 64 conns × 600 KB", "pair-600k-c64", "proxy", None, 80.0, "rss"),
    Goal("sidecar back to its idle RSS (at start) after load (≤ +10 MB)", "pair-600k-c64", "sidecar", None, 10.0, "idle"),
    Goal("proxy back to its idle RSS (at start) after load (≤ +10 MB)", "pair-600k-c64", "proxy", None, 10.0, "idle"),
    Goal("16 cores: sidecar at 4 workers ≥ 3× 1 worker, 600 KB", "scale-600k", "sidecar-w4", "sidecar-w1", 3.0, min_cores=16),
    Goal("16 cores: sidecar ≥ 4 GB/s of 600 KB requests (8 workers)", "scale-600k", "sidecar-w8", None, 4.0, "gbps", min_cores=16),
)


def run_by_name(scenario: dict, name: str) -> dict | None:
    return next((r for r in scenario.get("runs", []) if r["name"] == name and not r.get("error")), None)


def evaluate(goal: Goal, scenarios: dict[str, dict]) -> dict:
    """{goal, measured, met, margin, note}: margin is how far above (+) or below (-) the target, in %."""
    sc = scenarios.get(goal.scenario)
    out = {"goal": goal.text, "scenario": goal.scenario, "target": goal.target, "kind": goal.kind, "measured": None,
           "met": None, "margin_pct": None, "note": ""}
    if sc is None or sc.get("skipped"):
        out["note"] = f"not measured: {(sc or {}).get('skipped', 'scenario did not run')}"
        return out
    cores = sc.get("params", {}).get("cores", 0)
    if goal.min_cores and cores < goal.min_cores:
        out["note"] = f"not judged: needs {goal.min_cores} cores, this machine has {cores}" + _scaling_note(sc)
        return out
    if goal.kind == "gbps":
        s = run_by_name(sc, goal.subject)
        if not s:
            out["note"] = f"not measured: {goal.subject} did not run"
            return out
        v = s["gb_per_s"]
        out.update(measured=v, met=v >= goal.target, margin_pct=round((v / goal.target - 1) * 100, 1))
        return out
    if goal.kind == "ratio":
        s, b = run_by_name(sc, goal.subject), run_by_name(sc, goal.baseline or "")
        if not s or not b or not b["rps"]:
            missing = [n for n, r in ((goal.subject, s), (goal.baseline, b)) if not r]
            out["note"] = "not measured: " + ", ".join(f"{n} failed" for n in missing)
            return out
        ratio = s["rps"] / b["rps"]
        out.update(measured=round(ratio, 3), met=ratio >= goal.target, margin_pct=round((ratio / goal.target - 1) * 100, 1))
        return out
    mem = sc.get("memory", {}).get(goal.subject)
    if not mem:
        out["note"] = f"not measured: no RSS samples of {goal.subject}"
        return out
    if goal.kind == "rss":
        v = mem["peak_mb"]
        out.update(measured=v, met=v <= goal.target, margin_pct=round((1 - v / goal.target) * 100, 1))
    else:
        v = round(mem["after_mb"] - mem["idle_mb"], 1)
        out.update(measured=v, met=v <= goal.target, margin_pct=round(goal.target - v, 1))
        out["note"] = f"idle at start {mem['idle_mb']} MB, peak {mem['peak_mb']} MB, after {mem['after_mb']} MB"
    return out


def _scaling_note(sc: dict) -> str:
    """What a machine with fewer cores did measure: each sidecar worker count's GB/s and speed-up over one worker."""
    runs = [r for r in sc.get("runs", []) if r["name"].startswith("sidecar-w") and not r.get("error")]
    if not runs:
        return ""
    scaling = sc.get("scaling", {})
    return " (measured: " + ", ".join(f"{r['name']} {r['gb_per_s']:.2f} GB/s" + (f" = {scaling[r['name']]}x" if r["name"] in scaling else "")
                                      for r in runs) + ")"


def _fmt(v, nd=1) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


def markdown(scenarios: dict[str, dict], goals: list[dict], meta: dict) -> str:
    lines = ["# Benchmark results (bench/suite)", "",
             f"- date: {meta['date']}", f"- machine: {meta['machine']}", f"- commit: `{meta['commit']}`",
             f"- command: `{meta['command']}`", f"- load: {meta['duration_s']} s per subject and round (+ warm-up), "
             f"{meta.get('rounds', 1)} rounds with the subjects interleaved, the median round reported (lower median for an even count) (every round's "
             f"req/s in brackets); servers with {meta['workers']} worker(s) each", f"- tools: {meta['tools']}", "",
             "Ratios compare subjects measured in the same run with the same load generator and the same backend (nginx",
             "serving 1 KB / sinking POSTs). On a 2-core machine shared with the load generator and the backend (and, here,",
             "with other jobs), absolute numbers are noisy; the ratios are what the goals are about.", "",
             "## Goals", "", *goals_table(goals)]
    lines += ["", "## Scenarios", ""]
    for sid, sc in scenarios.items():
        lines.append(f"### {sid}: {sc['title']}")
        lines.append("")
        if sc.get("skipped"):
            lines += [f"skipped: {sc['skipped']}", ""]
            continue
        lines += ["| subject | req/s | p50 ms | p99 ms | CPU ms/req | errors | ratio to baselines |", "|---|---|---|---|---|---|---|"]
        for r in sc["runs"]:
            if r.get("error"):
                lines.append(f"| {r['name']} | failed: {r['error'][:120].replace('|', '/').splitlines()[0]} | | | | | |")
                continue
            ratios = ", ".join(f"{k} {v:.2f}×" for k, v in r.get("ratios", {}).items())
            rounds = f" ({' / '.join(_fmt(x, 0) for x in r['rounds_rps'])})" if len(r.get("rounds_rps", [])) > 1 else ""
            lines.append(f"| {r['name']} | {_fmt(r['rps'])}{rounds} | {_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} | "
                         f"{_fmt(r['cpu_ms_per_req'], 3)} | {r['errors']} | {ratios} |")
        if sc.get("memory"):
            lines.append("")
            lines.append("RSS (MB; idle = just started, before = when this scenario began): " + "; ".join(
                f"{k}: idle {m['idle_mb']}, before {m.get('before_mb', '–')}, peak {m['peak_mb']}, after {m['after_mb']}"
                for k, m in sc["memory"].items()))
        ok = [r for r in sc["runs"] if not r.get("error")]
        for key, what in (("images_per_s", "images/s"), ("input_gb_per_s", "GB/s of input tensors"), ("gb_per_s", "GB/s of request bodies")):
            if any(key in r for r in ok):
                lines += ["", f"{what}: " + ", ".join(f"{r['name']} {r[key]:,}" for r in ok if key in r)]
        if sc.get("scaling"):
            lines += ["", "speed-up over one sidecar worker: " + ", ".join(f"{k} {v}×" for k, v in sc["scaling"].items())]
        if sc.get("device"):
            lines += ["", "model device: " + ", ".join(f"{k} {v}" for k, v in sc["device"].items())]
        if sc.get("notes"):
            lines += ["", sc["notes"]]
        lines.append("")
    if meta.get("skips"):
        lines += ["## Not run", ""] + [f"- {k}: {v}" for k, v in meta["skips"].items()] + [""]
    lines += ["## Notes", "", "Why goals are missed, the py-spy profiles, syscall counts, the kTLS/splice probe and the proposed "
              "patches: [bench/README.md](../README.md#findings).", ""]
    if meta.get("notes"):
        lines += [meta["notes"], ""]
    return "\n".join(lines)


README_BEGIN = "<!-- bench:goals:begin (written by bench/run.py) -->"
README_END = "<!-- bench:goals:end -->"


def goals_table(goals: list[dict]) -> list[str]:
    lines = ["| goal | measured | target | result |", "|---|---|---|---|"]
    for g in goals:
        unit = {"ratio": "×", "gbps": " GB/s"}.get(g["kind"], " MB")
        if g["met"] is None:
            res = g["note"]
        else:
            word = "met" if g["met"] else "**missed**"
            by = f"{abs(g['margin_pct'])}{'%' if g['kind'] != 'idle' else ' MB'}"
            res = f"{word} ({'+' if g['met'] else '-'}{by})" + (f"; {g['note']}" if g["note"] else "")
        lines.append(f"| {g['goal']} | {_fmt(g['measured'], 2 if g['kind'] in ('ratio', 'gbps') else 1)}{unit if g['measured'] is not None else ''} "
                     f"| {g['target']}{unit} | {res} |")
    return lines


def readme_section(goals: list[dict], meta: dict) -> str:
    """The block the top-level README shows: the latest full run's goals, its date, machine and commit."""
    head = [README_BEGIN, f"Latest full run: {meta['date']}, {meta['machine']}, commit `{meta['commit']}` "
            f"({meta.get('rounds', 1)} interleaved rounds of {meta['duration_s']} s, median; every scenario in "
            "[bench/results/README.md](bench/results/README.md), why goals are missed in [bench/README.md](bench/README.md#findings)).", ""]
    return "\n".join([*head, *goals_table(goals), README_END])


def update_readme(text: str, section: str) -> str:
    """``text`` with the block between the markers replaced by ``section`` (unchanged if there are no markers)."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return text
    return text[:start] + section + text[end + len(README_END):]


def add_ratios(scenario: dict) -> None:
    """Each subject's requests/s over each baseline's, in the same scenario."""
    runs = [r for r in scenario.get("runs", []) if not r.get("error")]
    baselines = [r for r in runs if r["role"] == "baseline" and r["rps"]]
    for r in runs:
        if r["role"] == "subject":
            # only runs driven by the same load client compare (`group`; absent = the scenario's one client)
            r["ratios"] = {b["name"]: round(r["rps"] / b["rps"], 3) for b in baselines if b.get("group") == r.get("group")}


def write_json(out: Path, scenarios: dict[str, dict], goals: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for sid, sc in scenarios.items():
        (out / f"suite-{sid}.json").write_text(json.dumps({"meta": meta, **sc}, indent=2) + "\n")
    (out / "suite-summary.json").write_text(json.dumps({"meta": meta, "goals": goals}, indent=2) + "\n")


def write_chart(out: Path, scenarios: dict[str, dict], goals: list[dict]) -> Path | None:
    """Left: requests/s per scenario and subject; right: each goal's measured/target."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ran = {k: v for k, v in scenarios.items() if not v.get("skipped") and any(not r.get("error") for r in v["runs"])}
    if not ran:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(16, max(5, 0.55 * len(ran) + 2)), gridspec_kw={"width_ratios": [3, 2]})
    names = sorted({r["name"] for sc in ran.values() for r in sc["runs"]})
    colors = {n: plt.cm.tab20(i % 20) for i, n in enumerate(names)}
    h = 0.8 / max(1, max(len(sc["runs"]) for sc in ran.values()))
    for i, (_sid, sc) in enumerate(ran.items()):
        top = max((r["rps"] for r in sc["runs"] if not r.get("error")), default=1) or 1
        for j, r in enumerate(sc["runs"]):
            if r.get("error"):
                continue
            ax.barh(i + j * h, r["rps"] / top, h, color=colors[r["name"]], label=r["name"])
            ax.text(r["rps"] / top + 0.01, i + j * h, f"{r['rps']:,.0f}", va="center", fontsize=6)
    ax.set_yticks([i + 0.4 - h / 2 for i in range(len(ran))], list(ran), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("requests/s, relative to the fastest subject of the scenario (labels: absolute)")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=5)
    measured = [g for g in goals if g["measured"] is not None]
    vals = [(g["measured"] / g["target"]) if g["kind"] == "ratio" else (g["target"] / max(g["measured"], 0.1) if g["kind"] == "rss" else
            (1.0 if g["met"] else 0.5)) for g in measured]
    ax2.barh(range(len(measured)), vals, color=["tab:green" if g["met"] else "tab:red" for g in measured])
    ax2.axvline(1.0, color="k", lw=0.8)
    ax2.set_yticks(range(len(measured)), [g["goal"] for g in measured], fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xlabel("measured / goal (≥ 1 = met)")
    fig.tight_layout()
    path = out / "suite.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
