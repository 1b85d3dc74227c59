"""Renders the benchmark suite's report (suite.md) and plots (suite_*.png) from its suite.json.

    python -m benchmarks.report benchmarks/results/suite.json            # next to the JSON
    python -m benchmarks.report benchmarks/results/suite.json --out /tmp/report

``python -m benchmarks`` measures and writes suite.json, then calls :func:`render`; this
command re-renders a report without measuring again. The targets are evaluated here, from the
figures in suite.json (:func:`evaluate_targets`), so a report always agrees with its numbers.
Plots use matplotlib's object API (``Figure`` + ``FigureCanvasAgg``), no pyplot state.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLOTS = {
    "single_process": "suite_single_process.png",
    "scaling": "suite_scaling.png",
    "breakdown": "suite_breakdown.png",
    "allreduce": "suite_allreduce.png",
    "time_to_accuracy": "suite_time_to_accuracy.png",
}
SECTIONS = ("single_process", "distributed", "breakdown", "allreduce", "memory", "scaling", "time_to_accuracy")
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}

# -- targets -------------------------------------------------------------------------------------


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _walk(data: Any, prefix: str = ""):
    """(dotted key, value) for every entry of nested dicts, shallow ones first."""
    if not isinstance(data, dict):
        return
    nested = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            nested.append((name, value))
        else:
            yield name, value
    for name, value in nested:
        yield from _walk(value, name + ".")


def _memory_targets(memory: dict | None) -> dict[str, dict[str, Any]]:
    """The two memory targets from whatever ``benchmarks.memory.run()`` returned.

    In order of preference: its own ``targets`` (a dict of {name: {"met", "limit", and figures
    per measurement, e.g. "ratios" or "rss_slope_bytes_per_step"}}, or a list of dicts with
    ``name`` and ``met``, optionally ``value`` / ``threshold``), whose worst figure is shown as
    the value and whose verdict is used; a verdict of its own (a boolean whose key holds
    "growth"); its figures: a growth per step in bytes (key holding "growth", compared with its
    ``growth_tolerance_bytes`` if it gives one, else 0) and the peak RSS over the computed bound
    (a key holding "peak" and "ratio"/"bound_ratio", or a peak and a bound in bytes)."""
    found: dict[str, dict[str, Any]] = {}
    if not isinstance(memory, dict) or not memory.get("available") or not isinstance(memory.get("result"), dict):
        return found
    result = memory["result"]
    own = result.get("targets")
    if isinstance(own, dict):
        own = [dict(v, name=k) if isinstance(v, dict) else {"name": k, "met": v} for k, v in own.items()]
    for item in own if isinstance(own, list) else []:
        if not isinstance(item, dict):
            continue
        name = str(item.get("name", item.get("id", ""))).lower()
        kind = "memory_growth" if "growth" in name else "peak_rss" if ("peak" in name or "rss" in name) else None
        if kind and kind not in found:
            value, where = _number(item.get("value")), None
            if value is None:  # the worst of its per-measurement figures
                figures = [
                    (k, v)
                    for k, v in item.items()
                    if isinstance(v, dict) and any(w in k for w in ("ratio", "slope", "growth"))
                ]
                numbers = [
                    abs(x) for x in (_number(v) for v in (figures[0][1].values() if figures else [])) if x is not None
                ]
                value, where = (max(numbers), figures[0][0]) if numbers else (None, None)
            threshold = next(
                (_number(item[k]) for k in ("threshold", "target", "limit") if _number(item.get(k)) is not None), None
            )
            if threshold is None:
                threshold = next((_number(v) for k, v in item.items() if "limit" in k and _number(v) is not None), None)
            found[kind] = {
                "value": value,
                "threshold": threshold,
                "verdict": item.get("met") if isinstance(item.get("met"), bool) else None,
                "source": f"benchmarks.memory's target {item.get('name', item.get('id'))!r}"
                + (f", worst of {where}" if where else ""),
            }
    flat = list(_walk(result))
    if "memory_growth" not in found:
        verdicts = [(k, v) for k, v in flat if "growth" in k.lower() and isinstance(v, bool)]
        figures = [
            (k, _number(v))
            for k, v in flat
            if "growth" in k.lower()
            and "toler" not in k.lower()
            and "threshold" not in k.lower()
            and _number(v) is not None
            and ("byte" in k.lower() or k.lower().endswith("growth") or "per_step" in k.lower())
        ]
        tolerance = next(
            (
                _number(v)
                for k, v in flat
                if "growth" in k.lower()
                and ("toler" in k.lower() or "threshold" in k.lower())
                and _number(v) is not None
            ),
            None,
        )
        if figures or verdicts:
            key, value = figures[0] if figures else (None, None)
            found["memory_growth"] = {
                "value": value,
                "threshold": tolerance if tolerance is not None else 0.0,
                "verdict": verdicts[0][1] if verdicts else None,
                "source": f"benchmarks.memory: {key or verdicts[0][0]}",
            }
    if "peak_rss" not in found:
        ratio = next(
            (
                (k, _number(v))
                for k, v in flat
                if "peak" in k.lower()
                and ("ratio" in k.lower() or "vs_bound" in k.lower() or "over_bound" in k.lower())
                and _number(v) is not None
            ),
            None,
        )
        if ratio is None:
            peak = next(
                ((k, _number(v)) for k, v in flat if "peak" in k.lower() and "bound" not in k.lower() and _number(v)),
                None,
            )
            bound = next(((k, _number(v)) for k, v in flat if "bound" in k.lower() and _number(v)), None)
            if peak and bound:
                ratio = (f"{peak[0]} / {bound[0]}", peak[1] / bound[1])
        if ratio is not None:
            found["peak_rss"] = {
                "value": ratio[1],
                "threshold": None,
                "verdict": None,
                "source": f"benchmarks.memory: {ratio[0]}",
            }
    return found


@dataclass(frozen=True)
class Target:
    id: str
    name: str
    figure: str
    op: str
    threshold: float
    unit: str  # "x" (ratio) or "%" (fraction shown as percent) or "B/step"
    value: Callable[[dict], tuple[float | None, str | None]]  # (value, where it came from / why missing)


def _section_value(*path: str, why: str) -> Callable[[dict], tuple[float | None, str | None]]:
    def get(sections: dict) -> tuple[float | None, str | None]:
        value = _number(_get(sections, *path))
        return (value, None) if value is not None else (None, why)

    return get


def _memory_value(kind: str) -> Callable[[dict], tuple[float | None, str | None]]:
    def get(sections: dict) -> tuple[float | None, str | None]:
        memory = sections.get("memory")
        entry = _memory_targets(memory).get(kind)
        if entry is None:
            note = (memory or {}).get("note") or "benchmarks.memory gave no figure for it"
            return None, note
        return entry["value"], entry["source"]

    return get


TARGETS: tuple[Target, ...] = (
    Target(
        "single_step",
        "Single process: dtrain step time <= 1.0x PyTorch's (all cores)",
        "dtrain step / PyTorch step, median of the per-round ratios",
        "<=",
        1.0,
        "x",
        _section_value("single_process", "median", "ratio_step", why="PyTorch peer not measured"),
    ),
    Target(
        "ddp_throughput",
        "2 workers x 1 thread: throughput >= 1.15x PyTorch DDP with 2 ranks",
        "dtrain 2 workers / DDP 2 ranks (samples/s), median of the per-round ratios",
        ">=",
        1.15,
        "x",
        _section_value(
            "distributed", "median", "ratio_2w_vs_ddp", why="PyTorch DDP peer or the 2-worker run not measured"
        ),
    ),
    Target(
        "scaling_efficiency",
        "2 workers: scaling efficiency >= 85% of 1 worker",
        "samples/s on 2 workers / (2 x samples/s on 1 worker), median of rounds",
        ">=",
        0.85,
        "%",
        _section_value("distributed", "median", "efficiency_2w", why="the 2-worker run was not measured"),
    ),
    Target(
        "allreduce_40MiB",
        "Allreduce of 40 MiB between 2 workers <= 1.3x a raw socket",
        "allreduce 40 MiB / raw loopback socket moving 40 MiB one way, median of the per-round ratios",
        "<=",
        1.3,
        "x",
        _section_value("allreduce", "per_size", "40MiB", "ratio_vs_oneway", why="40 MiB allreduce not measured"),
    ),
    Target(
        "memory_growth",
        "No per-step memory growth",
        "steady-state RSS slope (bytes per step), worst measurement, from benchmarks.memory",
        "<=",
        0.0,
        "B/step",
        _memory_value("memory_growth"),
    ),
    Target(
        "peak_rss",
        "Peak RSS <= 1.2x the computed bound",
        "peak RSS / computed bound, worst measurement, from benchmarks.memory",
        "<=",
        1.2,
        "x",
        _memory_value("peak_rss"),
    ),
)


def evaluate_targets(suite: dict) -> list[dict[str, Any]]:
    """Each target with its value from suite.json's sections and ``met``: True, False, or None
    (not measured). ``met`` is ``value <op> threshold``, except for memory targets for which
    ``benchmarks.memory`` gave its own verdict (or threshold), which is then used."""
    sections = suite.get("sections", {})
    out = []
    for target in TARGETS:
        value, source = target.value(sections)
        threshold, verdict = target.threshold, None
        if target.id in ("memory_growth", "peak_rss"):
            entry = _memory_targets(sections.get("memory")).get(target.id) or {}
            threshold = entry.get("threshold") if entry.get("threshold") is not None else target.threshold
            verdict = entry.get("verdict")
        if verdict is not None:  # benchmarks.memory's own verdict (it knows its noise)
            met = verdict
        elif value is not None:
            met = OPS[target.op](value, threshold)
        else:
            met = None
        out.append(
            {
                "id": target.id,
                "name": target.name,
                "figure": target.figure,
                "op": target.op,
                "threshold": threshold,
                "unit": target.unit,
                "value": value,
                "met": met,
                "verdict_by": "benchmarks.memory" if verdict is not None else None,
                "note": source if value is None or target.id in ("memory_growth", "peak_rss") else None,
            }
        )
    return out


# -- formatting ----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_target_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.0f} {unit}"


def verdict(met: bool | None) -> str:
    return "**met**" if met is True else "**not met**" if met is False else "not measured"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell if isinstance(cell, str) else _fmt(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _error(section: dict | None) -> list[str]:
    if not section:
        return ["Not run.", ""]
    if section.get("error"):
        return [f"**Failed:** {section['error']}", ""]
    return []


# -- Markdown ------------------------------------------------------------------------------------


def render_markdown(suite: dict, plots: dict[str, str] | None = None) -> str:
    plots = plots or {}
    s = suite.get("sections", {})
    machine = suite.get("machine", {})
    settings = suite.get("settings", {})
    lines = ["# dtrain benchmark suite", ""]
    lines += _table(
        ["", ""],
        [
            ["command", f"`{suite.get('command', 'n/a')}`"],
            [
                "date",
                f"{suite.get('started', 'n/a')} to {suite.get('finished', 'n/a')} (wall time {_fmt(suite.get('wall_s'), 0)} s)",
            ],
            ["commit", str(suite.get("commit", "n/a"))],
            [
                "machine",
                f"{machine.get('cores', 'n/a')} cores usable ({machine.get('cpus', 'n/a')} CPUs), {machine.get('cpu_model', 'unknown CPU')}, "
                f"{_fmt(machine.get('memory_gib'), 1)} GiB RAM, {machine.get('platform', '')}",
            ],
            ["software", ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items())],
            [
                "load average (1, 5, 15 min) at start / end",
                f"{_load(machine.get('load_start'))} / {_load(machine.get('load_end'))}",
            ],
            ["settings", ", ".join(f"{k} {v}" for k, v in settings.items())],
        ],
    )
    if suite.get("quick"):
        lines += [
            "> **Quick run** (`--quick`): a tiny network, few steps and one round, to check that the suite works. "
            "The targets are defined for 784-1024-1024-10 at global batch 512, so the verdicts below say nothing "
            "about dtrain's performance.",
            "",
        ]
    for note in suite.get("notes", []):
        lines += [f"> note: {note}", ""]
    lines += [
        "The machine is shared and noisy: every comparison runs dtrain and its peer one after the other in fresh "
        "processes, and the ratios (medians of the per-round ratios) are what count, not the absolute times.",
        "",
    ]

    # targets
    targets = evaluate_targets(suite)
    lines += ["## Targets", ""]
    lines += _table(
        ["target", "figure", "value", "target value", "result"],
        [
            [
                t["name"],
                t["figure"] + (f" ({t['note']})" if t.get("note") else ""),
                _fmt_target_value(t["value"], t["unit"]),
                f"{t['op']} {_fmt_target_value(t['threshold'], t['unit'])}",
                verdict(t["met"]) + (f" ({t['verdict_by']}'s own verdict)" if t.get("verdict_by") else ""),
            ]
            for t in targets
        ],
    )

    lines += _single_process_md(s.get("single_process"), plots)
    lines += _distributed_md(s.get("distributed"))
    lines += _breakdown_md(s.get("breakdown"), plots)
    lines += _allreduce_md(s.get("allreduce"), plots)
    lines += _memory_md(s.get("memory"))
    lines += _scaling_md(s.get("scaling"), plots)
    lines += _tta_md(s.get("time_to_accuracy"), plots)
    return "\n".join(lines).rstrip() + "\n"


def _load(values: Any) -> str:
    return ", ".join(_fmt(_number(v)) for v in values) if isinstance(values, (list, tuple)) and values else "n/a"


def _image(plots: dict[str, str], key: str, alt: str) -> list[str]:
    return [f"![{alt}]({plots[key]})", ""] if key in plots else []


def _single_process_md(sp: dict | None, plots) -> list[str]:
    lines = ["## Single process: one training step against PyTorch", ""]
    if _error(sp):
        return lines + _error(sp)
    lines += [
        f"Network {sp.get('layers')}, batch {sp.get('batch')}, float32, SGD; {sp.get('threads')} threads for both "
        f"(dtrain: NumPy + BLAS; PyTorch: `torch.set_num_threads`). Each figure is the median of {sp.get('steps')} timed steps; "
        f"`python -m benchmarks.single_process` runs each round (command: `{sp.get('command')}`).",
        "",
    ]
    if sp.get("note"):
        lines += [f"> {sp['note']}", ""]
    rows = [
        [
            r.get("round"),
            r.get("dtrain_step_ms"),
            r.get("dtrain_fit_step_ms"),
            r.get("torch_step_ms"),
            r.get("ratio_step"),
            r.get("ratio_fit"),
        ]
        for r in sp.get("rounds", [])
    ]
    m = sp.get("median", {})
    rows.append(
        [
            "**median**",
            m.get("dtrain_step_ms"),
            m.get("dtrain_fit_step_ms"),
            m.get("torch_step_ms"),
            m.get("ratio_step"),
            m.get("ratio_fit"),
        ]
    )
    lines += _table(
        [
            "round",
            "dtrain step (ms)",
            "dtrain `fit()` per step (ms)",
            "PyTorch step (ms)",
            "step ratio",
            "`fit()` ratio",
        ],
        rows,
    )
    return lines + _image(plots, "single_process", "single-process step time per round")


def _distributed_md(d: dict | None) -> list[str]:
    lines = ["## Data parallel: 1 and 2 workers against PyTorch with as many ranks", ""]
    if _error(d):
        return lines + _error(d)
    lines += [
        f"Network {d.get('layers')}, global batch {d.get('global_batch')}, 1 thread per worker / rank. dtrain: `fit(..., client=)` on a "
        "`dtrain.local_cluster` (a LocalCluster with dtrain's Dask settings; `benchmarks.distributed.measure_dtrain`: 2 epochs, the second timed, time per step as the slower rank lives it). "
        f"PyTorch: {d.get('peer') or 'not measured'}.",
        "",
    ]
    if d.get("note"):
        lines += [f"> {d['note']}", ""]
    keys = [
        "dtrain_1w",
        "peer_1r",
        "ratio_1w_vs_peer",
        "dtrain_2w",
        "peer_2r",
        "ratio_2w_vs_ddp",
        "efficiency_2w",
        "peer_efficiency_2r",
    ]
    rows = [[r.get("round"), *[r.get(k) for k in keys]] for r in d.get("rounds", [])]
    rows.append(["**median**", *[d.get("median", {}).get(k) for k in keys]])
    lines += _table(
        [
            "round",
            "dtrain 1 worker (samples/s)",
            "PyTorch 1 rank",
            "1w / PyTorch",
            "dtrain 2 workers (samples/s)",
            "PyTorch DDP 2 ranks",
            "2w / DDP",
            "dtrain scaling efficiency",
            "DDP scaling efficiency",
        ],
        rows,
    )
    return lines


def _breakdown_md(b: dict | None, plots) -> list[str]:
    lines = ["## Where a 2-worker step goes", ""]
    if _error(b):
        return lines + _error(b)
    lines += [
        "Per step of the timed epoch of the 2-worker runs above: compute (forward, backward, update), communication (the "
        "step's collectives less waiting: the allreduce, or in a sharded step the reduce-scatter, the finite "
        "verdict and the allgather), waiting (for the slower rank), overhead (the rest of the step: batches, bookkeeping); "
        "medians over steps of the mean over ranks. *step* is the epoch's time per step.",
        "",
    ]
    parts = ["step_ms", "compute_ms", "communication_ms", "waiting_ms", "overhead_ms"]
    rows = [[r.get("round"), *[r.get(p) for p in parts]] for r in b.get("rounds", [])]
    rows.append(["**median**", *[b.get("median", {}).get(p) for p in parts]])
    lines += _table(["round", "step (ms)", "compute (ms)", "communication (ms)", "waiting (ms)", "overhead (ms)"], rows)
    return lines + _image(plots, "breakdown", "2-worker step breakdown")


def _allreduce_md(a: dict | None, plots) -> list[str]:
    lines = ["## Allreduce against a raw loopback socket", ""]
    if _error(a):
        return lines + _error(a)
    lines += [
        f"{a.get('workers')} workers, float32 buffers, median of {a.get('reps')} allreduces per size and round (slowest rank of "
        "each call); in the same run, a raw TCP loopback socket between two processes moving the same bytes one way (plus "
        "a 1-byte reply) and both ways at once (what a 2-rank allreduce must move). Medians over rounds; ratios are medians "
        f"of the per-round ratios. Command per round: `{a.get('command')}`.",
        "",
    ]
    rows = [
        [
            label,
            v.get("allreduce_ms"),
            v.get("raw_oneway_ms"),
            v.get("raw_exchange_ms"),
            v.get("ratio_vs_oneway"),
            v.get("ratio_vs_exchange"),
        ]
        for label, v in a.get("per_size", {}).items()
    ]
    lines += _table(
        ["size", "allreduce (ms)", "raw, one way (ms)", "raw, both ways at once (ms)", "vs one way", "vs both ways"],
        rows,
    )
    return lines + _image(plots, "allreduce", "allreduce time against size")


def _memory_md(m: dict | None) -> list[str]:
    lines = ["## Memory", ""]
    if not m:
        return lines + ["Not run.", ""]
    if not m.get("available"):
        return lines + [m.get("note") or "memory: not available", ""]
    if m.get("error"):
        return lines + [f"**Failed:** {m['error']}", ""]
    result = m.get("result") or {}
    lines += [
        f"From `benchmarks.memory.run()` ({m.get('note') or 'in a fresh process'}); its network: "
        f"{_get(result, 'network', 'layers')}, global batch {_get(result, 'network', 'global_batch')}.",
        "",
    ]
    summary = result.get("summary")
    if isinstance(summary, list) and summary:
        lines += [f"- {line}" for line in summary] + [""]
    targets = result.get("targets")
    if isinstance(targets, dict):
        peak = _get(targets, "peak_rss_within_1.2x_of_bound", "ratios") or {}
        slope = _get(targets, "no_per_step_growth", "rss_slope_bytes_per_step") or {}
        kept = _get(targets, "no_per_step_growth", "arrays_retained_per_steady_step_max") or {}
        names = list(dict.fromkeys([*peak, *slope, *kept]))
        if names:
            lines += _table(
                [
                    "measurement",
                    "peak RSS / (baseline + computed bound)",
                    "RSS slope (bytes/step)",
                    "arrays kept per step (max)",
                ],
                [[n, peak.get(n), slope.get(n), kept.get(n)] for n in names],
            )
        return lines
    rows = [[f"`{k}`", v] for k, v in _walk(result) if not isinstance(v, (list, tuple, dict))][:40]
    return lines + _table(["figure", "value"], rows)


def _scaling_md(sc: dict | None, plots) -> list[str]:
    lines = ["## Scaling with the number of workers", ""]
    if _error(sc):
        return lines + _error(sc)
    lines += [
        f"Network {sc.get('layers')}, global batch {sc.get('global_batch')} (the per-worker batch shrinks as workers are added), "
        f"workers {sc.get('workers')} x 1 thread. Ideal: n x the 1-worker samples/s; efficiency: samples/s over the ideal "
        "(per round, then the median).",
        "",
    ]
    if sc.get("peer_note"):
        lines += [f"> {sc['peer_note']}", ""]
    per = sc.get("per_workers", {})
    one = _number(_get(per, "1", "dtrain_samples_per_s"))
    rows = [
        [
            v["workers"],
            v.get("dtrain_samples_per_s"),
            one * v["workers"] if one else None,
            _pct(v.get("efficiency")),
            v.get("peer_samples_per_s"),
            _pct(v.get("peer_efficiency")),
            v.get("ratio_vs_peer"),
        ]
        for v in per.values()
    ]
    lines += _table(
        [
            "workers",
            "dtrain samples/s",
            "ideal samples/s",
            "dtrain efficiency",
            "PyTorch samples/s",
            "PyTorch efficiency",
            "dtrain / PyTorch",
        ],
        rows,
    )
    return lines + _image(plots, "scaling", "scaling curve")


def _pct(value: Any) -> str:
    value = _number(value)
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _tta_md(t: dict | None, plots) -> list[str]:
    lines = ["## Time to a target accuracy", ""]
    if _error(t):
        return lines + _error(t)
    p = t.get("problem", {})
    lines += [
        f"`dtrain.datasets.make_classification`: {p.get('n_train')} training and {p.get('n_val')} validation samples, "
        f"{p.get('features')} features, {p.get('classes')} classes, separation {p.get('separation')}, seed {p.get('seed')}. "
        f"Network {t.get('layers')}, global batch {t.get('batch')}, SGD (lr {t.get('learning_rate')}), fixed seeds; training stops "
        f"at the end of the first epoch whose validation accuracy is >= {t.get('target_accuracy')} (at most {t.get('max_epochs')} "
        "epochs). Seconds run from the `fit()` call (the cluster is already up; its start is listed apart) to that epoch's end "
        "as the caller sees it; dtrain runs use 2 logical shards, so 1 and 2 workers train the same maths.",
        "",
    ]
    for note in t.get("notes", []):
        lines += [f"> {note}", ""]
    rows = []
    for label, v in t.get("summary", {}).items():
        rows.append(
            [
                label,
                f"{v.get('reached')}/{v.get('runs')}",
                v.get("epochs"),
                v.get("seconds"),
                ", ".join(_fmt(x) for x in v.get("seconds_per_round", [])),
                v.get("final_val_accuracy"),
                v.get("startup_s"),
            ]
        )
    lines += _table(
        [
            "system",
            "rounds reaching the target",
            "epochs (median)",
            "seconds to target (median)",
            "seconds per round",
            "final validation accuracy (median)",
            "cluster start (s)",
        ],
        rows,
    )
    return lines + _image(plots, "time_to_accuracy", "validation accuracy against time")


# -- plots ---------------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot_single_process(sp: dict, path: Path) -> bool:
    rounds = sp.get("rounds") or []
    if not rounds:
        return False
    fig = _figure()
    ax = fig.add_subplot()
    xs = list(range(len(rounds)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [r.get("dtrain_step_ms") or 0 for r in rounds], width, label="dtrain")
    if any(r.get("torch_step_ms") for r in rounds):
        ax.bar(
            [x + width / 2 for x in xs],
            [r.get("torch_step_ms") or 0 for r in rounds],
            width,
            label=f"PyTorch ({sp.get('threads')} threads)",
        )
    ax.set_xticks(xs, [f"round {r.get('round')}" for r in rounds])
    ax.set_ylabel("step time (ms, lower is better)")
    ax.set_title(f"One training step, {sp.get('layers')}, batch {sp.get('batch')}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def _plot_scaling(sc: dict, path: Path) -> bool:
    per = sc.get("per_workers") or {}
    entries = [v for v in per.values() if v.get("dtrain_samples_per_s")]
    if not entries:
        return False
    fig = _figure(10, 4.2)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ns = [v["workers"] for v in entries]
    one = per.get("1", {}).get("dtrain_samples_per_s")
    left.plot(ns, [v["dtrain_samples_per_s"] for v in entries], "o-", label="dtrain")
    if one:
        left.plot(ns, [one * n for n in ns], "k--", label="ideal (n x 1 worker)")
    if any(v.get("peer_samples_per_s") for v in entries):
        left.plot(ns, [v.get("peer_samples_per_s") for v in entries], "s-", label="PyTorch (DDP for n >= 2)")
    left.set_xlabel("workers (1 thread each)")
    left.set_ylabel("samples/s")
    left.set_xticks(ns)
    left.set_title("Throughput")
    left.legend()
    right.plot(ns, [(v.get("efficiency") or 0) * 100 for v in entries], "o-", label="dtrain")
    if any(v.get("peer_efficiency") for v in entries):
        right.plot(ns, [(v.get("peer_efficiency") or 0) * 100 for v in entries], "s-", label="PyTorch")
    right.axhline(100, color="k", linestyle="--", label="ideal")
    right.axhline(85, color="tab:red", linestyle=":", label="target 85%")
    right.set_xlabel("workers (1 thread each)")
    right.set_ylabel("scaling efficiency (%)")
    right.set_xticks(ns)
    right.set_ylim(0, 110)
    right.set_title("Efficiency against 1 worker")
    right.legend(loc="lower left")
    fig.suptitle(f"Scaling, {sc.get('layers')}, global batch {sc.get('global_batch')}")
    fig.tight_layout()
    fig.savefig(path)
    return True


def _plot_breakdown(b: dict, path: Path) -> bool:
    rounds = b.get("rounds") or []
    if not rounds:
        return False
    bars = [(f"round {r.get('round')}", r) for r in rounds] + [("median", b.get("median", {}))]
    fig = _figure(7.6, 4.2)
    ax = fig.add_subplot()
    bottom = [0.0] * len(bars)
    xs = list(range(len(bars)))
    for part in ("compute_ms", "communication_ms", "waiting_ms", "overhead_ms"):
        heights = [_number(r.get(part)) or 0.0 for _, r in bars]
        ax.bar(xs, heights, 0.6, bottom=bottom, label=part[:-3])
        bottom = [a + h for a, h in zip(bottom, heights)]
    steps = [_number(r.get("step_ms")) for _, r in bars]
    ax.scatter(
        [x for x, s in zip(xs, steps) if s],
        [s for s in steps if s],
        marker="_",
        s=600,
        color="k",
        zorder=3,
        label="step (epoch time per step)",
    )
    ax.set_xticks(xs, [name for name, _ in bars])
    ax.set_ylabel("ms per step")
    ax.set_title("2-worker step: where the time goes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return True


def _plot_allreduce(a: dict, path: Path) -> bool:
    per = a.get("per_size") or {}
    if not per:
        return False
    nbytes = a.get("bytes", {})
    labels = [k for k in per if k in nbytes]
    xs = [nbytes[k] for k in labels]
    fig = _figure()
    ax = fig.add_subplot()
    for key, style, name in (
        ("allreduce_ms", "o-", f"dtrain allreduce ({a.get('workers')} workers)"),
        ("raw_oneway_ms", "s--", "raw socket, one way"),
        ("raw_exchange_ms", "^--", "raw socket, both ways at once"),
    ):
        pts = [(x, per[k].get(key)) for x, k in zip(xs, labels) if _number(per[k].get(key))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, labels, rotation=30)
    ax.set_xlabel("buffer size")
    ax.set_ylabel("time (ms, median)")
    ax.set_title("Allreduce against a raw loopback socket")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def _plot_tta(t: dict, path: Path) -> bool:
    rounds = t.get("rounds") or []
    if not rounds:
        return False
    fig = _figure()
    ax = fig.add_subplot()
    first = rounds[len(rounds) // 2]  # one representative round: the middle one
    for label, run in first.get("results", {}).items():
        curve = run.get("curve") or []
        if curve:
            ax.plot([c[1] for c in curve], [c[2] for c in curve], "o-", label=label)
    ax.axhline(t.get("target_accuracy", 0), color="k", linestyle=":", label=f"target {t.get('target_accuracy')}")
    ax.set_xlabel("seconds since fit() was called")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Time to accuracy (round {first.get('round')})")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return True


def render_plots(suite: dict, out_dir: Path) -> dict[str, str]:
    """Writes the PNGs it has figures for; returns {plot: file name}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    s = suite.get("sections", {})
    made = {}
    for key, fn in (
        ("single_process", _plot_single_process),
        ("scaling", _plot_scaling),
        ("breakdown", _plot_breakdown),
        ("allreduce", _plot_allreduce),
        ("time_to_accuracy", _plot_tta),
    ):
        section = s.get(key)
        if isinstance(section, dict) and not section.get("error") and fn(section, out_dir / PLOTS[key]):
            made[key] = PLOTS[key]
    return made


def render(suite: dict | str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Renders suite.md and the plots into ``out_dir`` (default: the JSON's folder)."""
    if not isinstance(suite, dict):
        path = Path(suite)
        suite = json.loads(path.read_text())
        out_dir = out_dir or path.parent
    out = Path(out_dir or ".")
    plots = render_plots(suite, out)
    md = out / "suite.md"
    md.write_text(render_markdown(suite, plots))
    return {
        "markdown": str(md),
        "plots": [str(out / name) for name in plots.values()],
        "targets": evaluate_targets(suite),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", type=Path, help="suite.json written by python -m benchmarks")
    p.add_argument("--out", type=Path, default=None, help="folder for suite.md and the PNGs (default: the JSON's)")
    args = p.parse_args(argv)
    result = render(args.suite, args.out)
    print(f"written {result['markdown']}" + "".join(f"\nwritten {plot}" for plot in result["plots"]))
    for t in result["targets"]:
        print(f"{verdict(t['met']).strip('*'):>12}  {t['name']}: {_fmt_target_value(t['value'], t['unit'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
