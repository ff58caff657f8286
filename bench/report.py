"""Turns bench/results.json into BENCHMARKS.md.

Everything in the file comes from the results on file: the tables, the
ratios, the verdicts on the targets of issues 7 and 9, and the explanations
of misses (each one is written here, next to the figures it depends on, and
printed only when its target is missed). The results may come from more
than one run of the harness (`--only` merges); the header then says which
sections were measured when.
"""

from __future__ import annotations

import statistics

MIB = 1024


def med(values):
    return statistics.median(values) if values else None


def spread(values, scale=1.0, digits=1, unit=""):
    """`median (min–max)` of a list, scaled (e.g. seconds to ms)."""
    if not values:
        return "n/a"
    m, lo, hi = (v * scale for v in (statistics.median(values), min(values), max(values)))
    return f"{m:,.{digits}f}{unit} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def ratio(ours, theirs):
    if not ours or not theirs:
        return None
    return statistics.median(ours) / statistics.median(theirs)


def fmt_ratio(r):
    if r is None:
        return "n/a"
    if r == 0:
        return "0"
    if r >= 1:
        return f"{r:.2f}"
    inverse = 1 / r
    return f"{r:.3f} (1/{inverse:,.0f})" if inverse >= 10 else f"{r:.3f} (1/{inverse:.1f})"


def verdict(ok):
    return "met" if ok else "**missed**"


class Doc:
    def __init__(self):
        self.parts: list[str] = []

    def p(self, text=""):
        self.parts.append(text)

    def table(self, head, rows):
        self.p("| " + " | ".join(head) + " |")
        self.p("|" + "|".join("---" for _ in head) + "|")
        for row in rows:
            self.p("| " + " | ".join(str(c) for c in row) + " |")
        self.p()

    def text(self):
        return "\n".join(self.parts).rstrip() + "\n"


def before_agent(requests: dict) -> int:
    """E2B calls made before the runner starts: everything but the kill
    (and signals) counts; the runner start itself is the last one."""
    return sum(n for route, n in requests.items() if route not in ("kill", "signal"))


def route_summary(requests: dict) -> str:
    order = ["create", "upload", "start", "kill"]
    keys = order + sorted(k for k in requests if k not in order)
    return ", ".join(f"{k} {requests[k]}" for k in keys if requests.get(k))


# What each phase of the harness is called in the header's list of runs.
PHASE_NAMES = {
    "cold": "cold start",
    "lambda": "Lambda cold start",
    "overhead": "per-query overhead",
    "trips": "round trips",
    "relay": "relay",
    "detached": "detached runs",
    "memory": "memory",
    "growth": "growth",
    "size": "binary size",
    "load": "`tests/load.rs`",
    "local": "local sandbox start-up",
    "proxy": "model endpoint",
    "otel": "OpenTelemetry",
}
# More busy cores than this before a run began, and the report says so.
BUSY = 0.25
# The originals' sides in results.json (the harness's ORIGINALS).
ORIGINAL_SIDES = ("theirs", "theirs092")
# The bench's own time budget on a fresh machine (issue 20).
FRESH_BUDGET_S = 15 * 60
# Issue 20: RSS 5 s after a load counts as back near idle within this.
AFTER_LOAD_SLACK_MIB = 10
# Issue 20: sequential E2B round trips before the agent.
TRIPS_TARGET = 2
# The summary paragraph's markers, in README.md and BENCHMARKS.md alike.
SUMMARY_START = "<!-- bench-summary:start -->"
SUMMARY_END = "<!-- bench-summary:end -->"


def originals(r: dict) -> list[str]:
    """The originals measured in this run, oldest first."""
    return [s for s in ORIGINAL_SIDES if s in (r.get("originals") or {})]


def version(r: dict, side: str) -> str:
    return r["originals"][side]["duvo-sandstorm"]


def name(r: dict, side: str) -> str:
    if side == "ours":
        return "ours"
    if side == "ours_nagle":
        return "ours, emulator without `TCP_NODELAY`"
    return f"original {version(r, side)}"


def best(r: dict, by_side: dict, values_of, higher_is_better: bool = False):
    """The faster original for one figure: (side, its values), by median;
    (None, None) when no original has it."""
    found = []
    for side in originals(r):
        if side in by_side:
            values = values_of(by_side[side])
            if values:
                found.append((statistics.median(values), side, values))
    if not found:
        return None, None
    pick = max(found) if higher_is_better else min(found)
    return pick[1], pick[2]


def vs(r: dict, side) -> str:
    """Which original a ratio is against."""
    return f" (vs {version(r, side)})" if side else ""


def percentile(values, p):
    """Nearest-rank percentile of a list (None if empty)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, -(-len(ordered) * p // 100) - 1))
    return ordered[int(k)]


def runs_on_file(r: dict) -> list[tuple[dict, list[str]]]:
    """The harness runs behind the results, oldest first: each with the
    phases it measured."""
    provenance = r.get("provenance") or {}
    runs: dict = {}
    for phase in PHASE_NAMES:
        if phase in provenance:
            run = provenance[phase]
            runs.setdefault((run["date"], run["commit"]), (run, []))[1].append(phase)
    return sorted(runs.values(), key=lambda item: item[0]["date"])


def busy_note(run: dict, cores: int) -> str:
    busy = run.get("busy_cores")
    if busy is None:
        return ""
    note = (
        " — **other work was running: taken on a busy machine, so every figure is noisier than usual**"
        if busy > BUSY
        else ""
    )
    return f"Before the measurements began, other work kept {busy:.2f} of the {cores} cores busy{note}."


# --- evidence on file -------------------------------------------------------------


def belongs(note_key: str, miss_key: str) -> bool:
    """Whether an evidence section is about a miss: its key is the miss's,
    or the miss's followed by `_` and more (`stalled_after` for `stalled`),
    so one miss can have several sections, in the file's order."""
    return note_key == miss_key or note_key.startswith(miss_key + "_")


def evidence(repo) -> dict[str, tuple[str, str]]:
    """bench/evidence.md, by key: (title, markdown). Its sections start
    `## key: Title`; the profiles and hand measurements that explain a
    figure live there, checked in, so regenerating the file keeps them."""
    path = repo / "bench" / "evidence.md" if repo else None
    if path is None or not path.exists():
        return {}
    out: dict = {}
    key = None
    for line in path.read_text().splitlines():
        if line.startswith("## ") and ":" in line:
            key, title = (part.strip() for part in line[3:].split(":", 1))
            out[key] = (title, [])
        elif key is not None:
            out[key][1].append(line)
    return {k: (title, "\n".join(body).strip()) for k, (title, body) in out.items()}


# --- the whole file -----------------------------------------------------------


def write(r: dict, out, repo) -> None:
    """BENCHMARKS.md from the results, and its summary paragraph into
    README.md (between the markers) and the growth chart beside it."""
    text = render(r, repo)
    out.write_text(text)
    chart = growth_svg(r)
    if chart:
        (repo / "bench" / "growth.svg").write_text(chart)
    readme = repo / "README.md"
    if readme.exists():
        readme.write_text(with_summary(readme.read_text(), summary(r)))


def with_summary(text: str, paragraph: str) -> str:
    """`text` with the paragraph between the summary markers replaced."""
    start, end = text.find(SUMMARY_START), text.find(SUMMARY_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {SUMMARY_START} ... {SUMMARY_END} markers for the benchmark summary")
    return text[: start + len(SUMMARY_START)] + "\n" + paragraph + "\n" + text[end:]


def render(r: dict, repo=None) -> str:
    d = Doc()
    m = r["machine"]
    runs = runs_on_file(r)
    d.p("# Benchmarks: Sandstorm in Rust and the Python original, side by side")
    d.p()
    when = f"Measured {runs[0][0]['date']} at commit `{runs[0][0]['commit']}` on " if len(runs) == 1 else "Measured on "
    origs = originals(r)
    original = ""
    if origs:
        described = "; ".join(
            f"{version(r, s)} (e2b SDK {r['originals'][s]['e2b']}, uvicorn {r['originals'][s]['uvicorn']})" for s in origs
        )
        original = f" The originals are `duvo-sandstorm` from PyPI, {described}, on Python {m['python']}."
    d.p(
        "Generated by `bench/run` — do not edit by hand; run it again instead. "
        f"{when}{m['cores']} cores "
        f"({m['cpu']}), {m['memory_gib']} GiB RAM, Linux {m['kernel']}, {m['rustc']}.{original}"
    )
    d.p()
    d.p(
        "Every server runs as a `ds serve` process against the same E2B emulator "
        "(`e2b-emulator`, synthetic runner: no model, no agent, so only the servers' own work "
        "differs), driven by the same client, in the same session, their runs interleaved. "
        f"Each figure is the median of at least {r.get('runs', 5)} runs unless its section says "
        "otherwise, written `median (min–max)`. Each ratio is ours over **the faster of the two "
        "originals for that figure**, named beside it. Raw figures: `bench/results.json`."
    )
    d.p()
    if len(runs) == 1:
        note = busy_note(runs[0][0], m["cores"])
        if note:
            d.p(note)
            d.p()
    else:
        d.p(
            "**Not one run**: the sections below were measured in separate runs of the harness "
            "(`bench/run --only ...`), so they do not share a baseline. Run `bench/run` whole "
            "before publishing:"
        )
        d.p()
        for run, phases in runs:
            d.p(f"- {', '.join(PHASE_NAMES[p] for p in phases)}: {run['date']} at commit `{run['commit']}`. {busy_note(run, m['cores'])}".rstrip())
        d.p()

    d.p("## Summary")
    d.p()
    d.p(SUMMARY_START)
    d.p(summary(r))
    d.p(SUMMARY_END)
    d.p()
    targets, misses = summary_rows(r)
    d.p("## Targets")
    d.p()
    d.table(["target", "issue", "measured", "verdict"], targets)

    cold_section(d, r)
    overhead_section(d, r)
    trips_section(d, r)
    relay_section(d, r)
    detached_section(d, r)
    memory_section(d, r)
    growth_section(d, r)
    if r.get("sizes"):
        size_section(d, r)
    local_section(d, r)
    proxy_section(d, r)
    otel_section(d, r)

    notes = evidence(repo)
    if misses:
        d.p("## Where a target is missed")
        d.p()
        for key, title, body in misses:
            d.p(f"### {title}")
            d.p()
            d.p(body)
            d.p()
            for title_on_file, body_on_file in (v for k, v in notes.items() if belongs(k, key)):
                d.p(f"**Evidence on file ({title_on_file}, `bench/evidence.md`):**")
                d.p()
                d.p(body_on_file)
                d.p()
    rest = [(k, v) for k, v in notes.items() if not any(belongs(k, key) for key, _, _ in misses)]
    if rest:
        d.p("## Profiles and hand measurements on file")
        d.p()
        d.p("From `bench/evidence.md` (checked in, not measured by `bench/run`; each names when and how it was taken).")
        d.p()
        for key, (title, body) in rest:
            d.p(f"### {title}")
            d.p()
            d.p(body)
            d.p()
    method_section(d, r)
    return d.text()


# --- the summary paragraph -----------------------------------------------------------


def summary(r: dict) -> str:
    """One paragraph of the headline figures, the same in README.md and
    BENCHMARKS.md (a test holds them equal)."""
    parts = []
    cold = r.get("cold")
    if cold:
        side, theirs = best(r, cold, lambda f: f["cold_start_s"])
        ours = cold["ours"]["cold_start_s"]
        parts.append(
            f"`ds serve` starts in {med(ours) * 1e3:.1f} ms, {fmt_ratio(ratio(ours, theirs))} of the faster original's "
            f"{med(theirs) * 1e3:.0f} ms ({version(r, side)})" if side else f"`ds serve` starts in {med(ours) * 1e3:.1f} ms"
        )
    ov = r.get("overhead")
    if ov and "0" in ov and "20" in ov:
        t0, t20 = med(ov["0"]["ours"]["first_event_s"]), med(ov["20"]["ours"]["first_event_s"])
        parts.append(
            f"reaches the first agent event in {t0 * 1e3:.1f} ms at 0 ms of E2B latency and {t20 * 1e3:.1f} ms at 20 ms "
            f"({trips_of(ov, 'ours')} sequential round trips before the agent)"
        )
    relay = r.get("relay")
    if relay:
        cost = med([c / n for c, n in zip(relay["ours"]["cpu_s"], relay["ours"]["lines"])]) * 1e6
        parts.append(f"relays an event for {cost:.1f} µs of server CPU")
    mem = r.get("memory")
    if mem and mem.get("ours"):
        fig = memory_figures(mem["ours"])
        parts.append(
            f"holds {mem['streams']:,} stalled clients in {fig['peak']:.0f} MiB at peak and is back to "
            f"{fig['5']:.0f} MiB 5 s after they leave (idle {fig['idle']:.0f} MiB)"
        )
    targets, _ = summary_rows(r)
    met = sum(1 for row in targets if row[-1] == "met")
    judged = sum(1 for row in targets if row[-1] in ("met", "**missed**"))
    run = runs_on_file(r)
    when = f" Measured {run[-1][0]['date']} at commit `{run[-1][0]['commit']}` on {r['machine']['cores']} cores" if run else ""
    busy = " (a busy machine: figures noisy)" if run and (run[-1][0].get("busy_cores") or 0) > BUSY else ""
    text = "Against the same E2B emulator, " + ", ".join(parts[:-1]) + (", and " if len(parts) > 1 else "") + (parts[-1] if parts else "") + "."
    return (
        f"{text} {met} of {judged} performance targets are met.{when}{busy}; the figures, the targets and the "
        "misses are in [BENCHMARKS.md](BENCHMARKS.md), generated by `bench/run`."
    )


def trips_of(ov: dict, side: str):
    """Sequential E2B round trips before the first event: the extra time
    20 ms of latency per call adds, over 20 ms, rounded."""
    if side not in ov.get("0", {}) or side not in ov.get("20", {}):
        return None
    t0, t20 = med(ov["0"][side]["first_event_s"]), med(ov["20"][side]["first_event_s"])
    return round((t20 - t0) / 0.020)


def memory_figures(runs: list[dict]) -> dict:
    """Medians in MiB over the runs: idle, peak, and after the load."""
    out = {"idle": med([x["idle_rss_kib"] for x in runs]) / MIB, "peak": med([x["peak_rss_kib"] for x in runs]) / MIB}
    for key in runs[0].get("after_rss_kib", {}):
        # "5" or "5.0": the seconds after the load, as the harness wrote them.
        out[f"{float(key):g}"] = med([x["after_rss_kib"][key] for x in runs]) / MIB
    return out


# --- targets ------------------------------------------------------------------


def summary_rows(r):
    """The targets table: [target, issue, measured, verdict] rows, and for
    each miss (evidence key, title, explanation from the figures)."""
    rows, misses = [], []
    cold = r.get("cold")
    if cold:
        side, theirs = best(r, cold, lambda f: f["cold_start_s"])
        rr = ratio(cold["ours"]["cold_start_s"], theirs)
        if rr is not None:
            rows.append(["cold start, `ds serve`: ≤ 1/50 of the original's", "7", fmt_ratio(rr) + vs(r, side), verdict(rr <= 1 / 50)])
            if rr > 1 / 50:
                misses.append(("cold", "Cold start of `ds serve`", MISS_TEXT["cold"].format(ours=med(cold["ours"]["cold_start_s"]) * 1e3)))
        lam = r.get("lambda")
        if lam and theirs:
            rl = ratio(lam["cold_start_s"], theirs)
            rows.append(["cold start, Lambda `bootstrap`: ≤ 1/50 of the original's", "7, 20", fmt_ratio(rl) + vs(r, side), verdict(rl <= 1 / 50)])
            if rl > 1 / 50:
                forced = ""
                if lam.get("nodelay_s"):
                    forced = (
                        f"With `TCP_NODELAY` forced on by an `LD_PRELOAD` shim (`bench/nodelay.c`) the same measurement gives "
                        f"{med(lam['nodelay_s']) * 1e3:.1f} ms, ratio {fmt_ratio(ratio(lam['nodelay_s'], theirs))}. "
                    )
                misses.append(
                    (
                        "lambda",
                        "Cold start of the Lambda `bootstrap`",
                        MISS_TEXT["lambda"].format(
                            forced=forced,
                            total=med(lam["cold_start_s"]) * 1e3,
                            head=med(lam["head_s"]) * 1e3,
                            head_ratio=fmt_ratio(ratio(lam["head_s"], theirs)),
                        ),
                    )
                )
        elif not lam:
            rows.append(["cold start, Lambda `bootstrap`: ≤ 1/50 of the original's", "7, 20", "not measured (no bootstrap binary)", "n/a"])
    ov = r.get("overhead")
    if ov:
        for latency in ("0", "20"):
            f = ov.get(latency)
            if not f:
                continue
            side, theirs = best(r, f, lambda x: x["first_event_s"])
            rr = ratio(f["ours"]["first_event_s"], theirs)
            if rr is None:
                continue
            rows.append([f"time to first agent event at {latency} ms E2B latency: ≤ 1/10 of the original's", "7", fmt_ratio(rr) + vs(r, side), verdict(rr <= 0.1)])
            if rr > 0.1 and latency == "0":
                misses.append(
                    (
                        "latency",
                        "First agent event at 0 ms of E2B latency",
                        MISS_TEXT["latency0"].format(
                            ours=med(f["ours"]["first_event_s"]) * 1e3, theirs=med(theirs) * 1e3, which=version(r, side)
                        ),
                    )
                )
            elif rr > 0.1:
                lat = int(latency)
                calls = trips_of(ov, "ours") or 0
                misses.append(
                    (
                        "latency",
                        f"First agent event at {latency} ms of E2B latency",
                        MISS_TEXT["latency"].format(
                            lat=lat,
                            ours=med(f["ours"]["first_event_s"]) * 1e3,
                            theirs=med(theirs) * 1e3,
                            which=version(r, side),
                            calls=calls,
                            floor=calls * lat,
                            best=calls * lat / (med(theirs) * 1e3),
                        ),
                    )
                )
        trips = trips_of(ov, "ours")
        if trips is not None:
            t0 = med(ov["0"]["ours"]["first_event_s"]) * 1e3
            t20 = med(ov["20"]["ours"]["first_event_s"]) * 1e3
            rows.append(
                [
                    f"{TRIPS_TARGET} sequential E2B round trips before the agent: first event at 20 ms ≈ {TRIPS_TARGET} × 20 ms + our own time",
                    "20",
                    f"{trips} ({t20:.1f} ms against {TRIPS_TARGET * 20} + {t0:.1f} ms)",
                    verdict(trips <= TRIPS_TARGET),
                ]
            )
            if trips > TRIPS_TARGET:
                misses.append(("trips", "Round trips before the agent", MISS_TEXT["trips"].format(trips=trips, t0=t0, t20=t20, goal=TRIPS_TARGET)))
        nagle = trips_of(ov, "ours_nagle")
        if nagle is not None:
            rows.append(
                [
                    "no figure depends on a delayed ACK: the same round trips against an emulator without `TCP_NODELAY`",
                    "20",
                    f"{nagle} (first event at 20 ms: {med(ov['20']['ours_nagle']['first_event_s']) * 1e3:.1f} ms)",
                    verdict(nagle == trips),
                ]
            )
            if nagle != trips:
                misses.append(("nagle", "A delayed ACK in the round trips", MISS_TEXT["nagle"].format(nagle=nagle, trips=trips)))
        else:
            rows.append(["no figure depends on a delayed ACK (emulator without `TCP_NODELAY`)", "20", "not measured: this emulator has no flag for it", "n/a"])
    trips_counted = r.get("trips")
    if trips_counted:
        counts = ", ".join(f"{k} files: {sorted({before_agent(q) for q in trips_counted[k]['ours']})}" for k in trips_counted)
        rows.append(["E2B calls before the agent, whatever the files (create, upload, start; counted, not timed)", "7", counts, "recorded"])
    mem = r.get("memory")
    if mem and mem.get("ours"):
        fig = memory_figures(mem["ours"])
        streams = mem["streams"]
        peak_ok = fig["peak"] * 1.048576 < 100
        rows.append([f"{streams:,} stalled clients (500 KB each): under 100 MB peak RSS", "20", f"{fig['peak']:.1f} MiB", verdict(peak_ok)])
        if not peak_ok:
            misses.append(("stalled", f"Peak RSS with {streams:,} stalled clients", MISS_TEXT["stalled"].format(peak=fig["peak"], per=fig["peak"] * 1024 / streams, idle=fig["idle"], above=(fig["peak"] - fig["idle"]) * 1024 / streams, budget=(100 / 1.048576 - fig["idle"]) * 1024 / streams)))
        if "5" in fig:
            back = fig["5"] - fig["idle"] <= AFTER_LOAD_SLACK_MIB
            rows.append(
                [
                    f"memory returns after the load: within {AFTER_LOAD_SLACK_MIB} MiB of idle 5 s after the clients left",
                    "20",
                    f"{fig['5']:.1f} MiB (idle {fig['idle']:.1f})",
                    verdict(back),
                ]
            )
            if not back:
                misses.append(("after_load", "Memory after the load", MISS_TEXT["after_load"].format(after=fig["5"], idle=fig["idle"])))
    growth = r.get("growth")
    if growth and growth.get("ours"):
        top = growth["ours"][-1]
        rows.append([f"{top['runs']:,} concurrent typical runs under 100 MB peak RSS", "7", f"{top['peak_rss_kib'] / MIB:.1f} MiB at {top['runs']:,}", verdict(top["peak_rss_kib"] / MIB * 1.048576 < 100)])
    relay = r.get("relay")
    if relay:
        cost = med([c / n for c, n in zip(relay["ours"]["cpu_s"], relay["ours"]["lines"])]) * 1e6
        rows.append(["median relay cost per event under 1 ms", "7", f"{cost:.2f} µs of server CPU per event", verdict(cost < 1000)])
    detached = r.get("detached")
    if detached:
        drop = log_cost(detached)
        rows.append(["a detached run's event log costs the relay ≤ 10% of its throughput", "14, 20", f"{drop * 100:.1f}%", verdict(drop <= 0.10)])
        if drop > 0.10:
            cpu = lambda f: med([c / n for c, n in zip(f["cpu_s"], f["lines"])]) * 1e6  # noqa: E731
            attached, detached_cpu = cpu(detached["attached"]), cpu(detached["detached"])
            misses.append(("detached", "The event log's cost", MISS_TEXT["detached"].format(rise=(detached_cpu / attached - 1) * 100, attached=attached, detached=detached_cpu)))
        reattach = detached.get("reattach", {}).get("first_replayed_s")
        failed = detached.get("reattach", {}).get("failed", [])
        if reattach or failed:
            got = f"{med(reattach) * 1e3:.1f} ms" if reattach else "no reattach succeeded"
            if failed:
                got += f"; {len(failed)} of {len(failed) + len(reattach)} reattaches failed"
            rows.append(["reattach: time to the first replayed event (a figure, no target)", "20", got, "recorded" if not failed else "**failed**"])
            if failed:
                misses.append(("reattach", "Reattach", f"{len(failed)} reattaches failed; the first: `{failed[0]}`"))
    proxy = r.get("proxy")
    if proxy:
        lat = proxy["figures"]["latency"]["endpoint_added_us"]["end"]
        p50 = lat["p50"] / 1e3
        rows.append(
            [
                "the model endpoint adds under 1 ms per model call at p50, on loopback",
                "14, 20",
                f"{p50:.2f} ms at p50 (p90 {lat['p90'] / 1e3:.2f} ms, p99 {lat['p99'] / 1e3:.2f} ms)"
                + (f"; {per_call:.0f} KiB of host memory per call in flight" if (per_call := proxy["figures"].get("memory", {}).get("per_call_kib")) else ""),
                verdict(p50 < PROXY_TARGET_MS),
            ]
        )
        if p50 >= PROXY_TARGET_MS:
            misses.append(("proxy", "The model endpoint's added latency", f"{p50:.2f} ms at p50. See the model endpoint section, where the stalls are explained."))
    otel = r.get("otel")
    if otel and otel.get("on") and otel.get("off"):
        added = (med(otel["on"]["end_s"]) - med(otel["off"]["end_s"])) * 1e3
        cpu = (med(otel["on"]["cpu_s"]) - med(otel["off"]["cpu_s"])) * 1e3
        rows.append(["OpenTelemetry: per-query overhead, export on against off (a figure, no target)", "18, 20", f"{signed(added)} ms per query, {signed(cpu)} ms of server CPU", "recorded"])
    local = r.get("local")
    if local:
        now = med(local_total(local["now"])) * 1e3
        rows.append(["local sandbox start-up (create to first process done) under 50 ms", "9, 20", f"{now:.1f} ms", verdict(now < LOCAL_TARGET_MS)])
        if now >= LOCAL_TARGET_MS:
            misses.append(("local", "Local sandbox start-up", MISS_TEXT["local"].format(now=now)))
    timing = r.get("timing")
    if timing:
        total = fresh_total(timing)
        rows.append([f"`bench/run` regenerates this file within 15 minutes ({'a fresh clone' if timing.get('fresh') else 'this checkout, not fresh'})", "20", f"{total / 60:.1f} min", verdict(total <= FRESH_BUDGET_S) if timing.get("fresh") else "recorded"])
        if timing.get("fresh") and total > FRESH_BUDGET_S:
            misses.append(
                (
                    "bench_time",
                    "`bench/run`'s own time",
                    f"{total / 60:.1f} min on a fresh clone, of which the build {timing['build_s'] / 60:.1f} min and the "
                    f"measurements {(timing['tests_s'] + timing['harness_s']) / 60:.1f} min: the build decides it. "
                    + (timing.get("note") or ""),
                )
            )
    return rows, misses


def fresh_total(timing: dict) -> float:
    return timing.get("build_s", 0) + timing.get("install_wait_s", 0) + timing.get("tests_s", 0) + timing.get("harness_s", 0)


# Issue 9: what a run pays for a local sandbox before its agent can start.
LOCAL_TARGET_MS = 50


def local_total(side: dict) -> list[float]:
    """Create plus first process, run by run: create to first process done."""
    return [a + b for a, b in zip(side["create_s"], side["first_process_s"])]


def signed(ms: float) -> str:
    return f"{ms:+,.2f}".replace("-", "−")


MISS_TEXT = {
    "cold": "`ds serve` took {ours:.1f} ms to answer its first `/health`. See the cold start table: the figure includes process creation and the probe's own connection.",
    "lambda": (
        "The `bootstrap` process starts its answer after {head:.1f} ms (ratio {head_ratio} to "
        "the faster original's `ds serve`), but the whole answer arrives only after "
        "{total:.1f} ms. {forced}A gap this size between the head and the end is a delayed "
        "ACK: the Runtime API client writing with Nagle on (see the evidence below)."
    ),
    "latency": (
        "At {lat} ms per E2B call, time to the first event is {ours:.1f} ms for ours and "
        "{theirs:.1f} ms for the faster original ({which}). Ours waits for {calls} sequential "
        "round trips (from the 0 and 20 ms figures), {floor} ms of E2B's time; even at zero "
        "time of our own the ratio would be {floor} / {theirs:.1f} = {best:.2f}: once latency "
        "dominates, 1/10 needs fewer sequential calls than any sandbox can be started with."
    ),
    "latency0": (
        "At 0 ms per E2B call, the first event comes after {ours:.1f} ms for ours and "
        "{theirs:.1f} ms for the faster original ({which}): each server's own work plus the "
        "emulator's, which is the same for both (creating a bubblewrap sandbox and starting "
        "its processes on the same 2 cores); 1/10 would need ours to take less than the "
        "emulator alone takes."
    ),
    "trips": (
        "20 ms per E2B call adds {t20:.1f} − {t0:.1f} ms to the first event: {trips} sequential "
        "round trips, against the goal of {goal} (create, then the upload and the start in "
        "parallel)."
    ),
    "nagle": (
        "Against an emulator that answers without `TCP_NODELAY`, 20 ms per call adds "
        "{nagle} round trips' worth of time instead of {trips}: a write waits for a delayed ACK."
    ),
    "stalled": "Peak {peak:.1f} MiB, about {per:.0f} KiB per stream counting the whole process, and {above:.0f} KiB per stream above the {idle:.1f} MiB the server holds idle after its warm-up query. Under 100 MB (95.4 MiB) needs under about {budget:.0f} KiB per stream above that idle, or a smaller idle.",
    "after_load": "5 s after the clients left, `ds serve` still holds {after:.1f} MiB, against {idle:.1f} MiB idle.",
    "detached": (
        "A detached run's lines take a second trip, through a file in the sandbox and the "
        "follower process that reads it back, before they reach the relay. Here the sandbox "
        "shares the machine's 2 cores with the emulator, the server and the client, so the "
        "follower's CPU comes out of theirs; the server's own CPU per line rises only "
        "{rise:.0f}% ({attached:.2f} → {detached:.2f} µs). On E2B the follower runs in the "
        "sandbox's own VM."
    ),
    "local": (
        "Create to first process done took {now:.1f} ms (median), over the 50 ms target; the "
        "local start-up table shows which step grew."
    ),
}


# --- sections ---------------------------------------------------------------------


def cold_section(d, r):
    cold = r.get("cold")
    if not cold:
        return
    d.p("## 1. Cold start")
    d.p()
    d.p(
        "Process start to the first `/health` answered 200, in ms. The Lambda door runs under a "
        "Runtime API emulator on loopback (`bench/lambda_runtime.py`): its time ends when the "
        "whole streamed answer to a Function URL `GET /health` event has arrived. Ratios are "
        "against the faster original's `ds serve`."
    )
    d.p()
    side, theirs = best(r, cold, lambda f: f["cold_start_s"])
    against = f"ours / {version(r, side)}" if side else "ratio"
    rows = [["ours, `ds serve`", spread(cold["ours"]["cold_start_s"], 1e3), fmt_ratio(ratio(cold["ours"]["cold_start_s"], theirs))]]
    lam = r.get("lambda")
    if lam:
        rows.append(["ours, Lambda `bootstrap`", spread(lam["cold_start_s"], 1e3), fmt_ratio(ratio(lam["cold_start_s"], theirs))])
        rows.append(["ours, Lambda `bootstrap`, until the answer's head reaches the Runtime API", spread(lam["head_s"], 1e3), fmt_ratio(ratio(lam["head_s"], theirs))])
        if lam.get("nodelay_s"):
            rows.append(
                [
                    "ours, Lambda `bootstrap` with `TCP_NODELAY` forced on by `bench/nodelay.c` (cross-check: equal once the bootstrap sets it itself)",
                    spread(lam["nodelay_s"], 1e3),
                    fmt_ratio(ratio(lam["nodelay_s"], theirs)),
                ]
            )
    else:
        rows.append(["ours, Lambda `bootstrap`", "not measured: the binary was not built", "n/a"])
    for s in originals(r):
        if s in cold:
            rows.append([f"{name(r, s)}, `ds serve`", spread(cold[s]["cold_start_s"], 1e3), ""])
    d.table(["", "ms", against], rows)


def overhead_section(d, r):
    ov = r.get("overhead")
    if not ov:
        return
    lines = r["workloads"]["small"]["lines"]
    d.p("## 2. Per-query overhead")
    d.p()
    nagle = "ours_nagle" in ov.get("0", {})
    d.p(
        f"One query, no files, the synthetic runner printing {lines} lines; time from sending "
        "`POST /query` to the first agent event and to the end of the stream (which every server "
        "closes after the sandbox is killed), in ms. Warm servers (one query each before "
        "measuring). The emulator answers with `TCP_NODELAY`, as E2B's Go servers do"
        + (
            f"; the row *{name(r, 'ours_nagle')}* is ours against a second emulator started with "
            f"`{ov.get('nagle_flag')}`, so a figure that hung on a delayed ACK would show there."
            if nagle
            else "; this emulator build has no flag to answer without it, so that check is not in this run."
        )
    )
    d.p()
    sides = ["ours"] + (["ours_nagle"] if nagle else []) + originals(r)
    rows = []
    for latency, f in ov.items():
        if not isinstance(f, dict) or "ours" not in f:
            continue
        for key, label in (("first_event_s", "first agent event"), ("end_s", "end of stream")):
            side, theirs = best(r, f, lambda x: x[key])
            row = [f"{latency} ms", label] + [spread(f[s][key], 1e3) if s in f else "n/a" for s in sides]
            row.append(fmt_ratio(ratio(f["ours"][key], theirs)) + vs(r, side))
            rows.append(row)
    d.table(["E2B latency", ""] + [name(r, s) for s in sides] + ["ours / faster original"], rows)
    d.p(
        "Sequential E2B round trips before the first event, computed as (first event at 20 ms − "
        "at 0 ms) / 20 ms, rounded: "
        + "; ".join(f"{name(r, s)} {trips_of(ov, s)}" for s in sides if trips_of(ov, s) is not None)
        + f". The goal for ours is {TRIPS_TARGET}: the first event at 20 ms should come at about "
        f"{TRIPS_TARGET} × 20 ms plus our own time at 0 ms."
    )
    d.p()


def trips_section(d, r):
    trips = r.get("trips")
    if not trips:
        return
    d.p("### E2B calls per query")
    d.p()
    d.p(
        "From the emulator's per-route request counters, reset before each query: how many calls, "
        "not how many of them wait on each other (that is the round trips above). \"Before the "
        "agent\" is every call but the kill. The ten files are five CSV files in `data/` and five "
        "Markdown files at the top."
    )
    d.p()
    sides = ["ours"] + originals(r)
    rows = []
    for n, by_side in trips.items():
        for s in sides:
            if s not in by_side:
                continue
            totals = sorted({before_agent(q) for q in by_side[s]})
            rows.append([n, name(r, s), ", ".join(map(str, totals)), route_summary(by_side[s][-1])])
    d.table(["files", "", "calls before the agent", "by route (last query)"], rows)


def log_cost(detached: dict) -> float:
    """How much the event log slows the relay: 1 - detached/attached of the
    median lines per second."""
    rate = lambda f: med([n / s for n, s in zip(f["lines"], f["relay_s"])])  # noqa: E731
    return 1 - rate(detached["detached"]) / rate(detached["attached"])


def detached_section(d, r):
    detached = r.get("detached")
    if not detached:
        return
    w = r["workloads"]["relay"]
    d.p("## 3b. Detached runs (issue 14)")
    d.p()
    d.p(
        f"Ours only: the original has no detached runs. The same synthetic output ({w['lines']:,} "
        f"lines of {w['bytes_']} bytes) relayed attached and detached, alternating on one "
        "`ds serve`, each through one real process in the sandbox, as a runner's output comes "
        "through a pipe: attached, the emulator writes the output to a file and `cat`s it "
        "(knob `synthetic_process`); detached, it writes the runner's records to the run's event "
        "log, as the runner in record mode would, and the follower (`runner/follow.mjs`) reads "
        "them back. Throughput counts from the first runner line to the end of the stream; CPU "
        "is the server's over the query."
    )
    d.p()
    rows = []
    for mode in ("attached", "detached"):
        f = detached[mode]
        rate = [n / s for n, s in zip(f["lines"], f["relay_s"])]
        cpu = [c / n * 1e6 for c, n in zip(f["cpu_s"], f["lines"])]
        rows.append([mode, spread(rate, 1, 0), spread(cpu, 1, 2), spread(f["total_s"], 1000, 0)])
    d.table(["", "lines/s", "server CPU µs per line", "whole query, ms"], rows)
    d.p(f"The event log costs the relay {log_cost(detached) * 100:.1f}% of its throughput.")
    d.p()
    rr = detached["reattach"]
    d.p(
        "Reattach: a detached run of 10 lines is started on one `ds serve` and left after its "
        "`run` event; a second `ds serve`, which shares nothing with the first but the emulator, "
        "is asked for `GET /runs/{id}/events`. It lists the sandboxes by the run's digest, "
        "connects, reads the run's config, starts a follower and replays the log. Both keep a "
        f"finished run's sandbox {rr.get('linger_s', 0)} s (`SANDSTORM_RUN_LINGER`, 60 s by default), as a deployment "
        "does: a 10-line run ends within milliseconds of its `run` event, and its sandbox must "
        "still be there for the second server to read its end."
    )
    d.p()
    d.table(
        ["", "ms"],
        [
            ["to the `run` event", spread(rr["first_event_s"], 1000, 1)],
            ["to the first replayed event (the first runner line)", spread(rr["first_replayed_s"], 1000, 1)],
            ["to the end of the replay", spread(rr["end_s"], 1000, 1)],
        ],
    )
    if rr.get("failed"):
        d.p(f"{len(rr['failed'])} reattaches failed (not counted above); the first: `{rr['failed'][0]}`")
        d.p()


def otel_section(d, r):
    otel = r.get("otel")
    if not otel:
        return
    w = r["workloads"]["small"]
    d.p("## 8. OpenTelemetry export (issue 18)")
    d.p()
    d.p(
        f"Ours only. The same query ({w['lines']} lines of {w['bytes_']} bytes, no added E2B "
        "latency) on two `ds serve`s, alternating: one with export off (no endpoint: nothing is "
        "built), one exporting every run's trace and the metrics over OTLP/HTTP (protobuf) to a "
        "loopback receiver that answers at once, so the figures are the server's own cost, not a "
        "backend's. Spans leave in the background batch, so a query does not wait for the export; "
        f"the receiver took {otel['exports']} export request{'' if otel['exports'] == 1 else 's'} "
        "over the runs (the batch goes every five seconds)."
    )
    d.p()
    rows = []
    for mode in ("off", "on"):
        f = otel[mode]
        rows.append(
            [
                f"export {mode}",
                spread(f["first_event_s"], 1000, 2),
                spread(f["end_s"], 1000, 2),
                spread(f["cpu_s"], 1000, 2),
            ]
        )
    d.table(["", "first event, ms", "whole query, ms", "server CPU per query, ms"], rows)
    added = (med(otel["on"]["end_s"]) - med(otel["off"]["end_s"])) * 1000
    cpu = (med(otel["on"]["cpu_s"]) - med(otel["off"]["cpu_s"])) * 1000
    d.p(f"Export on adds {added:+.2f} ms to the median query and {cpu:+.2f} ms of server CPU.")
    d.p()
    flush = otel.get("lambda")
    if flush:
        d.p(
            "The Lambda door flushes the exporters as each response's body ends (after `done`, "
            "before Lambda may freeze the function). One query invocation per fresh `bootstrap` "
            "under the Runtime API emulator, export off and on, alternating, with `TCP_NODELAY` "
            "forced by `bench/nodelay.c` (else the `done` chunk waits under Nagle and leaves with "
            "the body's end): the time from the chunk that carried `done` to the response's end "
            "is what the flush adds to the stream's close; no event waits for it."
        )
        d.p()
        d.table(
            ["", "`done` to the response's end, ms", "process start to the response's end, ms"],
            [
                [
                    f"export {mode}",
                    spread(flush[mode]["close_after_done_s"], 1000, 2),
                    spread(flush[mode]["invocation_s"], 1000, 1),
                ]
                for mode in ("off", "on")
            ],
        )


def relay_section(d, r):
    relay = r.get("relay")
    if not relay:
        return
    w = r["workloads"]["relay"]
    d.p("## 3. Relay throughput")
    d.p()
    d.p(
        f"One query whose runner prints {w['lines']:,} lines of {w['bytes_']} bytes. "
        "Throughput counts runner lines delivered whole per second, from the first event to "
        "the end of the stream; CPU per event is the server process's CPU time (all threads, "
        "from `/proc/PID/task/*/schedstat`) over the query, divided by the lines."
    )
    d.p()
    rate_of = lambda f: [n / s for n, s in zip(f["lines"], f["relay_s"])]  # noqa: E731
    cpu_of = lambda f: [c / n for c, n in zip(f["cpu_s"], f["lines"])]  # noqa: E731
    rows = []
    for side in ["ours"] + originals(r):
        f = relay.get(side)
        if not f:
            continue
        wall = [s / n * 1e6 for s, n in zip(f["relay_s"], f["lines"])]
        rows.append(
            [
                name(r, side),
                spread(rate_of(f), 1, 0),
                spread(cpu_of(f), 1e6, 2),
                spread(wall, 1, 2),
                f"{min(f['lines']):,}–{max(f['lines']):,}",
                f"{min(f['events']):,}–{max(f['events']):,}",
            ]
        )
    rate_side, rate_theirs = best(r, relay, rate_of, higher_is_better=True)
    cpu_side, cpu_theirs = best(r, relay, cpu_of)
    if rate_side:
        rows.append(
            [
                "ours / faster original",
                f"{ratio(rate_of(relay['ours']), rate_theirs):.2f}{vs(r, rate_side)}",
                f"{ratio(cpu_of(relay['ours']), cpu_theirs):.2f}{vs(r, cpu_side)}",
                "",
                "",
                "",
            ]
        )
    d.table(["", "lines/s", "CPU µs per line", "wall µs per line", "lines whole", "SSE events"], rows)
    d.p(
        "The originals forward each stdout chunk they get from the e2b SDK as one SSE event "
        "(a chunk holds about 65 of these lines), so they send about 65× fewer events, and a "
        "line that straddles two chunks arrives cut in two — hence fewer lines whole. Ours "
        "sends every line as its own event, byte for byte."
    )
    d.p()


def memory_section(d, r):
    cold = r.get("cold")
    mem = r.get("memory")
    if not (cold or mem or r.get("load")):
        return
    d.p("## 4. Memory")
    d.p()
    if cold:
        rows = [["ours, `ds serve`", spread([k / MIB for k in cold["ours"]["idle_rss_kib"]])]]
        lam = r.get("lambda")
        if lam:
            rows.append(["ours, Lambda `bootstrap`", spread([k / MIB for k in lam["idle_rss_kib"]])])
        for s in originals(r):
            if s in cold:
                rows.append([f"{name(r, s)}, `ds serve`", spread([k / MIB for k in cold[s]["idle_rss_kib"]])])
        side, theirs = best(r, cold, lambda f: f["idle_rss_kib"])
        d.p(f"Idle RSS (MiB), 0.5 s after the first `/health` answer; ours / the smaller original {fmt_ratio(ratio(cold['ours']['idle_rss_kib'], theirs))}{vs(r, side)}.")
        d.p()
        d.table(["", "MiB"], rows)
    if mem:
        c = r["workloads"]["concurrent"]["stalled"]
        runs = mem.get("runs", {})
        d.p(f"### {mem['streams']:,} stalled clients: idle, peak and after the load")
        d.p()
        d.p(
            f"A fresh server and emulator; after one warm-up query, {mem['streams']:,} queries at "
            f"once whose runner prints {c['lines']:,} lines of {c['bytes_']} bytes (500 KB), more "
            "than all the buffers between runner and client hold. Each client stops reading after "
            "its first event, so when all have one the server holds every stream open with its "
            "buffers full: the most a stalled client can make a server keep. Then every client "
            "disconnects and every sandbox must be killed (the emulator's counters are checked). "
            "*Idle* is the RSS 0.5 s after the warm-up, *peak* the server's `VmHWM`, and the "
            "*after* columns its RSS that long after the last sandbox was killed. MiB; "
            f"{runs.get('ours', '?')} run(s) of ours and {runs.get('theirs', '?')} of each "
            "original (a 1,000-stream run costs about half a minute, and more for the originals, "
            "so this phase is run fewer times than the rest; one run is written without a range)."
        )
        d.p()
        rows = []
        for s in ["ours"] + originals(r):
            got = mem.get(s)
            if not got:
                continue
            after = sorted(got[0].get("after_rss_kib", {}), key=float)
            leaked = sum(x["created"] - x["killed"] for x in got)
            failed = sum(x["failed_count"] for x in got)
            rows.append(
                [
                    name(r, s),
                    spread([x["idle_rss_kib"] / MIB for x in got]),
                    spread([x["peak_rss_kib"] / MIB for x in got]),
                    *(spread([x["after_rss_kib"][k] / MIB for x in got]) for k in after),
                    spread([x["open_s"] for x in got], 1, 1),
                    f"{failed}",
                    f"{leaked}",
                ]
            )
        after_cols = [f"{float(k):g} s after" for k in sorted(mem["ours"][0].get("after_rss_kib", {}), key=float)] if mem.get("ours") else []
        d.table(["", "idle", "peak", *after_cols, "all open after, s", "failed streams", "sandboxes leaked"], rows)
        side, theirs = best(r, mem, lambda runs_: [x["peak_rss_kib"] for x in runs_])
        if side and mem.get("ours"):
            d.p(f"Peak, ours / the smaller original: {fmt_ratio(ratio([x['peak_rss_kib'] for x in mem['ours']], theirs))}{vs(r, side)}.")
            d.p()
    load = r.get("load")
    if load:
        d.p(
            f"`tests/load.rs` (issue 6, item 7; its release build, run by `bench/run` against the release `ds`): "
            f"{load['streams']} concurrent queries of {load['lines_per_stream']} lines × "
            f"{load['line_bytes']} bytes, every stream checked complete and in order, "
            f"{load['events']:,} events in {load['wall_ms'] / 1e3:.1f} s; first event p50 "
            f"{load['first_event_ms']['p50']:.0f} ms, p99 {load['first_event_ms']['p99']:.0f} ms; "
            f"stream complete p50 {load['complete_ms']['p50']:.0f} ms, p99 {load['complete_ms']['p99']:.0f} ms; "
            f"idle RSS {load['idle_rss_kib'] / MIB:.1f} MiB, peak {load['peak_rss_kib'] / MIB:.1f} MiB"
            f"{after_load(load)}; "
            f"sandboxes created {load['created']}, killed {load['killed']}, alive {load['alive']}. "
            "(Its emulator runs inside the test process, so its latencies are not comparable "
            "with the figures above.)"
        )
        d.p()


def after_load(load):
    """What tests/load.rs saw once its clients had gone, when it measured it."""
    series = load.get("after_load_rss_series_kib")
    if not series:
        return ""
    step = load["after_load_sample_ms"] / 1e3
    return (
        f", {series[0] / MIB:.1f} MiB {step:g} s after the last stream ended and "
        f"{series[-1] / MIB:.1f} MiB {step * len(series):g} s after "
        f"({load['after_load_open_fds']} descriptors open)"
    )


# --- how it grows ---------------------------------------------------------------

# The growth curves: (key, title, unit, value of one step's figures).
CURVES = (
    ("rss", "peak RSS", "MiB", lambda f: f["peak_rss_kib"] / MIB),
    ("cpu", "server CPU per relayed line", "µs", lambda f: f["cpu_s"] / f["lines"] * 1e6 if f["lines"] else None),
    ("p99", "p99 time to first event", "ms", lambda f: (percentile(f["first_event_s"], 99) or 0) * 1e3 if f["first_event_s"] else None),
)


def bend(steps: list[int], values: list[float], key: str) -> str:
    """Where a curve bends, from its figures. Peak RSS: the marginal MiB
    per added run between steps, and the step where it changes most. The
    per-event and latency curves: the step where the figure grows the most
    for the runs added (its ratio to the step before)."""
    pts = [(n, v) for n, v in zip(steps, values) if v is not None]
    if len(pts) < 3:
        return "too few points to tell"
    if key == "rss":
        marginal = [((b[1] - a[1]) * 1024 / (b[0] - a[0]), a[0], b[0]) for a, b in zip(pts, pts[1:])]
        changes = [(abs(m2[0] - m1[0]), m1, m2) for m1, m2 in zip(marginal, marginal[1:])]
        change, m1, m2 = max(changes)
        per = ", ".join(f"{m:,.0f} KiB per run from {a:,} to {b:,}" for m, a, b in marginal)
        if change <= 0.25 * max(abs(m[0]) for m in marginal):
            return f"marginal cost {per}: about constant, no bend"
        return f"marginal cost {per}; it changes most past {m1[2]:,} runs ({m1[0]:,.0f} → {m2[0]:,.0f} KiB per run)"
    growth = [(b[1] / a[1] if a[1] else float("inf"), a[0], b[0], a[1], b[1]) for a, b in zip(pts, pts[1:])]
    g, a, b, va, vb = max(growth)
    flat = all(x[0] < 1.5 for x in growth)
    if flat:
        return f"flat: no step grows it 1.5× (largest: ×{g:.2f}, {a:,} → {b:,} runs)"
    return f"bends between {a:,} and {b:,} runs: ×{g:.1f} ({va:,.2f} → {vb:,.2f}) for ×{b // a} the runs"


def growth_section(d, r):
    g = r.get("growth")
    if not g or not g.get("ours"):
        return
    w = r["workloads"]["concurrent"]["typical"]
    d.p("## 4b. How it grows")
    d.p()
    d.p(
        f"N runs at once, N = {', '.join(f'{n:,}' for n in g['steps'])}: a fresh server and emulator per "
        f"point, one warm-up query, then N queries whose runner prints {w['lines']} lines of "
        f"{w['bytes_']} bytes, every client reading to the end. Peak RSS is the server's `VmHWM`; "
        "CPU per relayed line is the server's CPU over the N runs over the runner lines delivered "
        "(a run is only 10 lines, so this carries each run's own work too: its sandbox's create, "
        "upload, start and kill); "
        "p99 is over the N streams' times to the first event. One run per point. The originals "
        f"are measured up to {g['theirs_max']:,} runs. The chart is `bench/growth.svg`."
    )
    d.p()
    sides = ["ours"] + [s for s in originals(r) if g.get(s)]
    for key, title, unit, value in CURVES:
        rows = []
        for n in g["steps"]:
            row = [f"{n:,}"]
            for s in sides:
                fig = next((f for f in g[s] if f["runs"] == n), None)
                v = value(fig) if fig else None
                row.append(f"{v:,.2f}" if v is not None else "—")
            rows.append(row)
        d.p(f"**{title}, {unit}**")
        d.p()
        d.table(["runs"] + [name(r, s) for s in sides], rows)
        ours = g["ours"]
        d.p(f"Ours: {bend([f['runs'] for f in ours], [value(f) for f in ours], key)}.")
        d.p()
    incomplete = [f"{name(r, s)} at {f['runs']:,}: {f['completed']:,} of {f['runs']:,} streams complete" for s in sides for f in g[s] if f["completed"] < f["runs"]]
    if incomplete:
        d.p("Streams that did not complete: " + "; ".join(incomplete) + ".")
        d.p()
    d.p("![How it grows: peak RSS, CPU per relayed line and p99 time to first event against concurrent runs](bench/growth.svg)")
    d.p()


def growth_svg(r: dict) -> str | None:
    """Three small log-log panels, one per curve, a line per side: plain
    SVG text, no plotting library."""
    g = r.get("growth")
    if not g or not g.get("ours"):
        return None
    import math

    sides = ["ours"] + [s for s in originals(r) if g.get(s)]
    colors = {"ours": "#d9480f", "theirs": "#1c7ed6", "theirs092": "#5c940d"}
    pw, ph, pad = 260, 180, 46
    width = len(CURVES) * (pw + pad) + pad
    height = ph + 2 * pad + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">']
    out.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    xs = [math.log10(n) for n in g["steps"]]
    for i, (key, title, unit, value) in enumerate(CURVES):
        x0, y0 = pad + i * (pw + pad), pad
        series = {s: [(math.log10(f["runs"]), value(f)) for f in g[s] if value(f)] for s in sides}
        vals = [v for pts in series.values() for _, v in pts if v > 0]
        if not vals:
            continue
        lo, hi = math.log10(min(vals)), math.log10(max(vals))
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        sx = lambda x: x0 + (x - xs[0]) / (xs[-1] - xs[0]) * pw  # noqa: E731
        sy = lambda v: y0 + ph - (math.log10(v) - lo) / (hi - lo) * ph  # noqa: E731
        out.append(f'<text x="{x0}" y="{y0 - 14}" font-weight="bold">{title} ({unit})</text>')
        out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#aaa"/>')
        for n, x in zip(g["steps"], xs):
            out.append(f'<text x="{sx(x):.1f}" y="{y0 + ph + 14}" text-anchor="middle">{n:,}</text>')
        for v in (10**lo, 10**hi):
            out.append(f'<text x="{x0 - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:,.3g}</text>')
        for s, pts in series.items():
            if not pts:
                continue
            path = " ".join(f"{sx(x):.1f},{sy(v):.1f}" for x, v in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colors.get(s, "#000")}" stroke-width="2"/>')
            for x, v in pts:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(v):.1f}" r="3" fill="{colors.get(s, "#000")}"/>')
    lx = pad
    for s in sides:
        out.append(f'<rect x="{lx}" y="{height - 16}" width="10" height="10" fill="{colors.get(s, "#000")}"/>')
        label = "ours" if s == "ours" else f"original {version(r, s)}"
        out.append(f'<text x="{lx + 14}" y="{height - 7}">{label}</text>')
        lx += 120
    out.append(f'<text x="{width - pad}" y="{height - 7}" text-anchor="end">concurrent runs (log); values (log)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def size_section(d, r):
    s = r["sizes"]
    d.p("## 5. Binary size")
    d.p()
    rows = []
    for bin_name in ("ds", "bootstrap"):
        b = s.get(bin_name)
        if b:
            rows.append([f"`{bin_name}`", f"{b['bytes'] / 1024 / 1024:.1f} MiB", "yes" if b["stripped"] else "no"])
        else:
            rows.append([f"`{bin_name}`", "not built", ""])
    d.table(["release binary", "size", "stripped"], rows)
    d.p(
        "Both are built by `bench/run`'s one cargo invocation, with `--features sandstorm/lambda`: "
        "`ds` then links the AWS clients the serverless doors use, which a plain "
        "`cargo build --release --bin ds` leaves out, so this `ds` is larger than that one."
    )
    d.p()
    site = {k: v for k, v in (s.get("site_packages") or {}).items() if v}
    if site:
        sizes = "; ".join(f"{version(r, k)} {v / 1024 / 1024:.0f} MiB" for k, v in site.items())
        smallest = min(site.values())
        share = f" `ds` is {fmt_ratio(s['ds']['bytes'] / smallest)} of the smaller." if s.get("ds") else ""
        d.p(
            "The originals ship no binary. For scale: their installed Python packages (each "
            f"virtualenv's `site-packages`, without the interpreter) take {sizes}.{share}"
        )
        d.p()


def local_section(d, r):
    local = r.get("local")
    if not local:
        return
    before = local.get("before")
    commit = local.get("before_commit")
    d.p("## 6. Local sandbox start-up (issue 9)")
    d.p()
    d.p(
        "What a run pays for a local sandbox before its agent can start, through the release "
        "`e2b-emulator` on loopback (whose sandboxes are the local provider's, the same code "
        "`ds` runs without an E2B key): (a) `POST /sandboxes` until its 201; (b) envd's "
        "`process.Process/Start` of `true` until the process's `end` event; (c) "
        "`DELETE /sandboxes/{id}` until it is answered. Since issue 9, create starts the "
        "sandbox — bwrap makes its user, pid, network, ipc, uts and cgroup namespaces and "
        "tmpfs mounts, with the shim's init as its first process, and create waits for the "
        "init's ready line — and every later process joins it with `nsenter` and runs "
        "through the shim (rlimits, seccomp)"
        + (
            f"; before it (commit `{commit}`), create was a `mkdir` and every process a `bwrap` of its own. "
            if commit
            else "; before it, create was a `mkdir` and every process a `bwrap` of its own. "
        )
        + f"{local['runs']} runs of each after {local['warmup']} uncounted"
        + (", the two emulators alternating going first" if before else "")
        + "; one kept-alive client connection per emulator, with `TCP_NODELAY` "
        "(`bench/startup.py`), and 0.1 s between runs. In ms, `median (min–max)`; "
        "\"what #9 adds\" is the difference of the medians"
        + (" (per-run sums for the total)." if before else ".")
        + (" The emulator ran as root, so each sandbox is also started under a leased uid of its own." if local.get("root") else "")
    )
    d.p()
    stages = [
        ("(a) create → 201", "create_s"),
        ("(b) first process (`true`): start → exited", "first_process_s"),
        (None, None),
        ("(c) kill → answered", "kill_s"),
    ]

    def figures(side, key):
        return local_total(side) if key is None else side[key]

    rows = []
    for label, key in stages:
        label = label or "**create to first process done, (a)+(b)**"
        row = [label]
        if before:
            row.append(spread(figures(before, key), 1e3))
        row.append(spread(figures(local["now"], key), 1e3))
        if before:
            row.append(signed((med(figures(local["now"], key)) - med(figures(before, key))) * 1e3))
        rows.append(row)
    head = [""] + ([f"before #9 (`{commit}`)" if commit else "before #9"] if before else []) + ["now"] + (["what #9 adds"] if before else [])
    d.table(head, rows)
    d.p(
        "To measure this section again (the other sections keep their figures): build the "
        "emulator from before issue 9 once, e.g. "
        "`git worktree add ../before 3a970cd && (cd ../before && CARGO_TARGET_DIR=../target-before "
        "cargo build --release -p e2b-emulator)`, then "
        "`bench/run --only local --before-emulator ../target-before/release/e2b-emulator --before-commit 3a970cd`."
    )
    d.p()


# Issue 14: what the model endpoint may add to a call at p50, on loopback.
PROXY_TARGET_MS = 1.0
# A call through the endpoint this much slower than direct has stalled.
STALL_US = 10_000

# Measured by hand, not by the harness: the same benchmark with one line
# added to the sandbox's bridge (src/sandbox/local/shim.rs, `bridge`),
# `let _ = inbound.set_nodelay(true);` after `accept`, not committed.
# µs, from tests/bench_model_endpoint.rs's figures of that run.
PROXY_NODELAY = {
    "date": "2026-12-06 00:04 UTC",
    "commit": "46dfdd6",
    "added_end": {"p50": 192.4, "p90": 204.5},
    "added_p50_per_round": [202.2, 201.9, 181.1, 156.2, 182.4],
    "paused_end_p50": {"direct": 21532.2, "endpoint": 21896.8},
}


def us(value: float) -> str:
    return f"{value:,.0f}".replace("-", "−")


def proxy_section(d, r):
    proxy = r.get("proxy")
    if not proxy:
        return
    f = proxy["figures"]
    lat, streaming, mem = f["latency"], f["streaming"], f["memory"]
    n = lat["direct"]["end_us"]["n"]
    d.p("## 7. Model endpoint (issue 14)")
    d.p()
    d.p(
        "What the local sandbox's keyless model endpoint adds to a model call, and what a call "
        "in flight costs the host: `tests/bench_model_endpoint.rs`, run in release by "
        "`bench/run --only proxy`. The upstream is a Messages API stand-in (axum on loopback, "
        "with `TCP_NODELAY`, in a process of its own) that answers every `POST /v1/messages` "
        "with the same small stream"
        + (f" of {proxy['answer_bytes']} bytes" if proxy.get("answer_bytes") else "")
        + ": `message_start` with usage, a text block with three `content_block_delta`s, "
        "`message_delta`, `message_stop`. One client (`tests/fixtures/model_client.py`: "
        "Python's `http.client` on one kept-alive connection with `TCP_NODELAY`) makes the "
        "calls one after another, streaming, on the host straight to the upstream (*direct*) "
        "and in a local sandbox through `$ANTHROPIC_BASE_URL` (*endpoint*): the sandbox's "
        "bridge on `127.0.0.1:3128`, the host's egress server on the sandbox's Unix socket, "
        "and the endpoint, which finds the route by the placeholder token, holds the request "
        "body, asks the run's spend meter, and forwards with reqwest and the real key, "
        "streaming the answer back through a usage reader. *Without meter* is the same with "
        "no spend meter (`ProcessSpec.spend` empty); `ds` gives every local run one. "
        f"{proxy['rounds']} rounds of {proxy['calls_per_round']} timed calls per path, each "
        f"after {proxy['warmup']} untimed ones on the same connection, the paths' order "
        f"rotating each round: {n:,} calls per path. From sending the request to the first "
        "byte of the answer's body (its first event) and to its end, in µs; *added* is the "
        "endpoint's percentile minus the direct one's."
    )
    d.p()
    rows = []
    for key, label in (("direct", "direct"), ("endpoint", "endpoint"), ("endpoint_unmetered", "endpoint, without meter")):
        first, end = lat[key]["first_us"], lat[key]["end_us"]
        rows.append([label] + [us(first[p]) for p in ("p50", "p90", "p99")] + [us(end[p]) for p in ("p50", "p90", "p99")])
    for key, label in (("endpoint", "**added**"), ("endpoint_unmetered", "added, without meter")):
        added = lat[f"{key}_added_us"]
        rows.append([label] + [us(added["first"][p]) for p in ("p50", "p90", "p99")] + [us(added["end"][p]) for p in ("p50", "p90", "p99")])
    d.table(["", "first byte p50", "p90", "p99", "whole call p50", "p90", "p99"], rows)
    per_round = lat["added_p50_us_per_round"]
    d.p(
        "Added at p50 (whole call), round by round: "
        + ", ".join(us(x) for x in per_round)
        + f" µs; the median of the rounds is {us(med(per_round))} µs. The tails of both "
        "paths also carry the machine's scheduling (the client, the upstream and the endpoint "
        "share its 2 cores with whatever else runs): a direct call's p99 is "
        f"{us(lat['direct']['end_us']['p99'])} µs, its slowest {us(lat['direct']['end_us']['max'])} µs."
    )
    d.p()
    paused = proxy["paused_calls"]
    d.p(
        f"Streaming: {paused} calls per path whose answer pauses {proxy['pause_ms']} ms after "
        "its first event. Had the endpoint held the answer back, the first byte through it "
        "would come after the pause."
    )
    d.p()
    d.table(
        ["", "first byte p50", "first byte max", "end p50", "end max"],
        [
            [label, us(streaming[key]["first_us"]["p50"]), us(streaming[key]["first_us"]["max"]), us(streaming[key]["end_us"]["p50"]), us(streaming[key]["end_us"]["max"])]
            for key, label in (("direct", "direct"), ("endpoint", "endpoint"))
        ],
    )
    slowest = streaming["endpoint"]["first_us"]["max"]
    if slowest < proxy["pause_ms"] * 1e3:
        d.p(f"Every first byte came through the endpoint before the pause ended (the slowest after {us(slowest)} µs): the answer streams through as it comes.")
    else:
        d.p(f"A first byte came through the endpoint only after the pause ({us(slowest)} µs): the endpoint held an answer back.")
    d.p()
    late = (streaming["endpoint"]["end_us"]["p50"] - streaming["direct"]["end_us"]["p50"]) / 1e3
    over = lambda key: lat[key]["end_us"].get("over_10ms")  # noqa: E731
    stalled = (
        lat["endpoint_added_us"]["end"]["p99"] > STALL_US
        or max(per_round) > STALL_US
        or late * 1e3 > STALL_US
    )
    if stalled:
        hit = sum(1 for x in per_round if x > STALL_US)
        fix = PROXY_NODELAY
        facts = []
        if over("endpoint") is not None:
            facts.append(
                f"{over('endpoint')} of the {n:,} calls through the endpoint took over 10 ms "
                f"(direct: {over('direct')}; without meter: {over('endpoint_unmetered')})"
            )
        if hit:
            facts.append(f"in {hit} of {len(per_round)} rounds even the p50 did")
        facts.append(f"the paused answers ended {late:.1f} ms after the direct ones at p50")
        facts = "; ".join(facts)
        d.p(
            "Some calls through the endpoint take about 40 ms more. "
            f"{facts[:1].upper() + facts[1:]}. It is Nagle's algorithm meeting a delayed ACK. The sandbox's "
            "bridge (`src/sandbox/local/shim.rs`, `bridge`) does not set `TCP_NODELAY` on the "
            "connections it accepts, so a write it makes while the client has not yet "
            "acknowledged the last waits for that ACK, and the client, which sends nothing "
            "until the answer is whole, holds the ACK for its 40 ms delayed-ACK timer. A fast "
            "answer stalls when it reaches the bridge in more than one piece, which depends on "
            "timing, so the stall comes and goes by connection (and the p50 verdict depends on "
            "how many rounds it hits); a paused one always does, since its later events come "
            "after the first was sent. A model's real answer is the paused case: its events "
            "come tens of ms apart, so each can wait up to 40 ms, and the Agent SDK's calls "
            "take this path. The same benchmark with "
            "`let _ = inbound.set_nodelay(true);` after the bridge's `accept` (measured by hand "
            f"on {fix['date']} at `{fix['commit']}` plus that line, not committed): added "
            f"{us(fix['added_end']['p50'])} µs at p50 and {us(fix['added_end']['p90'])} µs at "
            f"p90, every round between {us(min(fix['added_p50_per_round']))} and "
            f"{us(max(fix['added_p50_per_round']))} µs at p50, and the paused answers ended "
            f"{(fix['paused_end_p50']['endpoint'] - fix['paused_end_p50']['direct']) / 1e3:.1f} ms "
            "after the direct ones."
        )
        d.p()
    rss = mem["rss_kib"]
    held = proxy["held"]
    d.p(
        f"Memory: the resident memory (`VmRSS`) of the process that hosts the endpoints "
        "(the test process: the local provider, its sandboxes' egress servers and the "
        "endpoint, on glibc's malloc where `ds` runs on jemalloc; the upstream runs in a "
        f"process of its own) with {held} sandboxes idle; then each running the client, "
        f"waiting for a go file; then each with its call open, the upstream holding every "
        "answer after its first event; then after the calls ended, and after every sandbox "
        "was destroyed. 0.5 s between a step and its reading. One reading each, taken before "
        "the latency rounds, so no memory those freed is reused."
    )
    d.p()
    d.table(
        ["", "RSS, MiB", f"per unit ({held}), KiB"],
        [
            ["start", f"{rss['start'] / MIB:.1f}", ""],
            [f"{held} sandboxes idle", f"{rss['sandboxes_idle'] / MIB:.1f}", f"{mem['per_sandbox_kib']:.1f} per sandbox"],
            ["… each running the client, ready", f"{rss['clients_ready'] / MIB:.1f}", f"{mem['per_client_kib']:.1f} per process"],
            ["… each with its call in flight", f"{rss['calls_held'] / MIB:.1f}", f"**{mem['per_call_kib']:.1f} per call**"],
            ["… the calls ended", f"{rss['calls_done'] / MIB:.1f}", ""],
            ["sandboxes destroyed", f"{rss['destroyed'] / MIB:.1f}", ""],
        ],
    )
    d.p(
        "A call in flight holds its connection through the egress server (hyper's buffers), "
        "its request body, its upstream connection (reqwest, pooled across sandboxes) and "
        "the answer's stream with its usage reader. After the calls end the process keeps "
        "what it had: the upstream connections stay pooled for the next calls, and glibc "
        "keeps what its arenas freed."
    )
    d.p()


def method_section(d, r):
    runs = runs_on_file(r)
    elapsed = "; ".join(f"{', '.join(PHASE_NAMES[p] for p in phases)} {run['elapsed_s']:.0f} s" for run, phases in runs if run.get("elapsed_s") is not None)
    d.p("## How it was measured")
    d.p()
    timing = r.get("timing")
    if timing:
        where = (
            "a fresh clone (empty target folder, nothing in `bench/.work`)"
            if timing.get("fresh")
            else "a checkout whose target folder and `bench/.work` already held earlier builds and installs (not a fresh machine)"
        )
        d.p(
            f"`bench/run` took {fresh_total(timing) / 60:.1f} min on {where}: the build (one cargo "
            f"invocation, `--features sandstorm/lambda`: the release binaries and the release "
            f"test binaries) {timing['build_s']:.0f} s, then waiting for the installs that ran "
            f"beside it (both originals and the runner's `node_modules`) {timing['install_wait_s']:.0f} s, "
            f"`tests/load.rs` and `tests/bench_model_endpoint.rs` {timing['tests_s']:.0f} s, and the "
            f"harness {timing['harness_s']:.0f} s."
            + (f" {timing['note']}" if timing.get("note") else "")
        )
        d.p()
    d.p(
        f"`bench/run` builds, installs the originals in `bench/.work/venv` (0.4.0) and "
        f"`bench/.work/venv-0.9.2`, runs `tests/load.rs` and `tests/bench_model_endpoint.rs`, then "
        f"`bench/harness.py` (measurements took: {elapsed}). "
        "The emulator keeps its sandbox folders on tmpfs and answers with `TCP_NODELAY`, as "
        "E2B's Go servers do. Both originals run against it unchanged: they create sandboxes "
        "from the template `work-43ca/sandstorm` (0.9.2 reads `SANDSTORM_TEMPLATE`, unset here, "
        "and defaults to it), and the emulator's synthetic runner answers their "
        "`node /opt/agent-runner/runner.mjs` as it does ours; their other commands (`mkdir`, "
        "0.9.2's `touch` of an extraction marker and its search for files) run for real in the "
        "sandbox. Every server gets the same environment: the emulator's URL for both E2B "
        "planes, dummy keys, an empty working folder, default logging to a file. "
        "The client (`bench/sse.py`) is a small asyncio HTTP/1.1 reader, the same for all; "
        "its own CPU shares the two cores with the servers and the emulator, so wall-clock "
        "relay figures are a floor on what each server can do, and the CPU figures are the "
        "fairer comparison. Cold starts are probed every 0.2 ms with a plain socket; one "
        "discarded start of each warms the page cache first."
    )
    d.p()
