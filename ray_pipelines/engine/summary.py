"""The table printed at the end of a job."""

from __future__ import annotations

from .runner import JobResult


def format_summary(
    job_name: str, result: JobResult, rows_label: str = "rows", units: dict[str, float] | None = None
) -> str:
    c = result.counts
    seconds = max(result.seconds, 1e-9)
    run_seconds = max(result.manifest["timings"].get("run_seconds", seconds), 1e-9)
    splits = ", ".join(f"{name or 'all'} {rows}" for name, rows in sorted(result.manifest["splits"].items()))
    lines = [
        ("output", result.output),
        ("ray", result.ray or "not started (nothing to do)"),
        ("inputs listed", _listed(c.get("selected", c["listed"]), result.manifest.get("inputs", {}))),
        ("input changes", _changes(result.manifest.get("inputs", {}))),
        ("already committed", f"{c['skipped_already_committed']} (skipped before reading)"),
        ("processed this run", c["processed_this_run"]),
        (f"{rows_label} in output", f"{c['rows_written']}" + (f" ({splits})" if splits else "")),
        (f"{rows_label} this run", result.run_rows),
        (
            "inputs with errors",
            f"{c['errors']} ({c['error_rows']} error row{'s' * (c['error_rows'] != 1)}, see errors.jsonl)"
            if c["errors"]
            else "0",
        ),
    ]
    for i, kind in enumerate(result.manifest.get("error_reasons", ())):
        lines.append(
            ("most common errors" if i == 0 else "", f"{kind['rows']} {kind['reason']} (e.g. {kind['example']})")
        )
    if c.get("lost"):
        lines.append(("lost (retried next run)", c["lost"]))
    complete = result.manifest.get("complete", True)
    lines.append(("complete", "yes (_SUCCESS written)" if complete else f"no: {c.get('to_retry', 0)} inputs to retry"))
    if c["processed_this_run"]:
        lines.append(
            (
                "throughput",
                f"{c['processed_this_run'] / run_seconds:.1f} inputs/s, "
                f"{result.run_rows / run_seconds:.1f} {rows_label}/s",
            )
        )
        for unit, amount in (units or {}).items():
            lines.append(("", f"{amount / run_seconds:.1f} {unit}/s"))
        steady = result.steady_rows_per_second
        if steady is not None:
            lines.append(("steady state", f"{steady:.1f} {rows_label}/s (while every writer was busy)"))
    for label, value in (result.extra or {}).items():  # what the job's after_commit reported
        shown = _short(value)
        if shown is not None:
            lines.append((str(label), shown))
    lines.append(("time", f"{seconds:.1f} s"))
    width = max(len(label) for label, _ in lines)
    body = "\n".join(f"  {label:<{width}}  {value}" for label, value in lines)
    return f"\n{job_name} job finished\n{body}\n"


def _listed(selected: int, inputs: dict) -> str:
    """Every input listed (``counts.listed`` holds those selected: keep/ignore lists, ``limit``)."""
    listed = selected
    if inputs:  # a rewritten shard's old key counts as changed, and is not listed itself
        listed = sum(inputs.get(what, 0) for what in ("new", "changed", "unchanged", "left_out")) - inputs.get(
            "rewritten", 0
        )
    return f"{listed}" + (f" ({selected} selected)" if listed != selected else "")


def _changes(inputs: dict) -> str:
    """New, changed, deleted and unchanged inputs since the last commit, and what was done."""
    if not inputs:
        return "-"
    changed = {"reprocess": "reprocessed", "keep": "kept"}.get(inputs.get("on_change", ""), "")
    deleted = {"prune": "pruned", "keep": "kept"}.get(inputs.get("on_delete", ""), "")
    unretried = inputs.get("deleted_unretried", 0)  # nothing of them to keep: removed whatever on_delete says
    if deleted == "kept" and unretried:
        deleted = f"{inputs['deleted'] - unretried} kept, {unretried} with nothing to keep removed"
    return (
        f"{inputs['new']} new, {inputs['changed']} changed"
        + (f" ({changed})" if inputs["changed"] else "")
        + f", {inputs['deleted']} deleted"
        + (f" ({deleted})" if inputs["deleted"] else "")
        + f", {inputs['unchanged']} unchanged"
        # Left out: not selected and not committed as listed (a committed input not selected is unchanged).
        + (
            f", {inputs['left_out']} left out (not selected, never committed or changed)"
            if inputs.get("left_out")
            else ""
        )
    )


def _short(value) -> str | None:
    """A one-line form of a reported value: scalars, and small flat dicts or lists; else None."""
    if isinstance(value, (str, int, float)):
        return str(value)
    scalar = (str, int, float, bool, type(None))
    if isinstance(value, (dict, list, tuple)) and not value:
        return None  # nothing to show (the score job's summaries when every input is an error row)
    if isinstance(value, dict) and len(value) <= 8 and all(isinstance(v, scalar) for v in value.values()):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, scalar) for v in value):
        return ", ".join(str(v) for v in value)
    return None
