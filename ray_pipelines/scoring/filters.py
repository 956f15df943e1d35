"""Outlier filters on the scores: bounds from the train split, applied to every split.

Any score column can have a rule:

- ``median``: keep ``[Q1 - k*IQR, Q3 + k*IQR]`` (k = 1.5);
- ``mean``: keep ``[mean - k*std, mean + k*std]`` (k = 1.5, population std unless ``ddof: 1``);
- ``percentile``: keep ``[quantile(lower), quantile(upper)]`` (0.05, 0.95);
- ``hardcode``: keep ``bounds`` (either end may be None: open); required, except for the
  reconstruction scorer's two scores, which default to the seed's (1.5, 7.0);
- ``none``: keep every finite value.

Quantiles interpolate linearly between order statistics (NumPy's and
pandas' default). Bounds are inclusive. For ``median`` and ``mean``,
``hard_low`` / ``hard_high`` replace the computed lower / upper bound.
``side: lower`` (or ``upper``) keeps only that cut, e.g. to drop low quality
scores but not high ones. When the train split has no finite score the
computed bounds are undefined and only hard cut-offs (if any) apply; the
report says so. An item whose score is not finite is rejected by a rule on
that score. An item is kept only when every rule keeps it (their union of
rejections). Scores without a rule are not filtered, except the
reconstruction scorer's two, which keep the seed's median/IQR default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

# The modes that use each option. A rule without a mode is a median rule; one given an option of
# another mode alone (``{bounds: [3, null]}``) meant that mode, so it is refused rather than ignored.
# With a mode named, other modes' options are left alone: ``--set NAME.mode=...`` cannot remove them.
MODES_USING = {
    "k": ("median", "mean"),
    "ddof": ("mean",),
    "lower_quantile": ("percentile",),
    "upper_quantile": ("percentile",),
    "bounds": ("hardcode",),
}


class FilterRule(BaseModel):
    """How one score is filtered."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["none", "median", "mean", "percentile", "hardcode"] = "median"
    k: float = Field(1.5, ge=0, description="median: IQR multiplier; mean: std multiplier.")
    ddof: int = Field(0, ge=0, le=1, description="mean: 0 = population std (NumPy), 1 = sample std (pandas).")
    lower_quantile: float = Field(0.05, ge=0, le=1, description="percentile: lower quantile.")
    upper_quantile: float = Field(0.95, ge=0, le=1, description="percentile: upper quantile.")
    bounds: tuple[float | None, float | None] | None = Field(
        None,
        description="hardcode: fixed (low, high); null leaves that side open. Required, except for "
        "reconstruction_loss and signal_energy (default [1.5, 7.0]).",
    )
    hard_low: float | None = Field(None, description="median/mean: replaces the computed lower bound.")
    hard_high: float | None = Field(None, description="median/mean: replaces the computed upper bound.")
    side: Literal["both", "lower", "upper"] = Field(
        "both", description="Which cuts apply: both, lower only (reject low values), upper only."
    )

    @model_validator(mode="after")
    def _consistent(self) -> FilterRule:
        if self.lower_quantile >= self.upper_quantile:
            raise ValueError(
                f"lower_quantile ({self.lower_quantile}) must be below upper_quantile ({self.upper_quantile})"
            )
        low, high = self.bounds or (None, None)
        if low is not None and high is not None and low > high:
            raise ValueError(f"bounds: low ({low}) is above high ({high})")
        if (self.side == "lower" and self.hard_high is not None) or (
            self.side == "upper" and self.hard_low is not None
        ):
            raise ValueError(f"side {self.side!r} drops the bound that hard_low/hard_high sets")
        if self.mode == "hardcode" and self.side != "both" and self.bounds is not None:
            # the one bound the side keeps, left open: the rule kept every value without a word
            which, kept_bound = ("low", low) if self.side == "lower" else ("high", high)
            if kept_bound is None:
                shown = ", ".join("null" if bound is None else f"{bound:g}" for bound in self.bounds)
                raise ValueError(
                    f"side {self.side!r} keeps only the {which} bound, which bounds [{shown}] leaves open (null): "
                    f"the rule would keep every value; give the {which} bound, or the side that bounds sets"
                )
        for name, modes in MODES_USING.items():
            if "mode" not in self.model_fields_set and name in self.model_fields_set and self.mode not in modes:
                raise ValueError(
                    f"{name} is an option of mode {' or '.join(modes)}; "
                    f"this rule names no mode, so it is {self.mode!r}: set mode: {modes[0]}"
                )
        if (self.hard_low is not None or self.hard_high is not None) and self.mode not in ("median", "mean"):
            raise ValueError(
                f"hard_low/hard_high apply to the median and mean modes, not {self.mode!r} (a rule that holds them "
                "changes to another mode given whole, --set 'NAME={mode: " + self.mode + "}': --set cannot remove "
                "a key)"
            )
        if self.hard_low is not None and self.hard_high is not None and self.hard_low > self.hard_high:
            raise ValueError(f"hard_low ({self.hard_low}) is above hard_high ({self.hard_high})")
        return self


@dataclass
class Bounds:
    """The bounds a rule ended up with (None = open on that side) and how it got them."""

    low: float | None
    high: float | None
    report: dict[str, Any] = field(default_factory=dict)

    def keep(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        kept = np.isfinite(values)
        if self.low is not None:
            kept &= values >= self.low
        if self.high is not None:
            kept &= values <= self.high
        return kept


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def compute_bounds(rule: FilterRule, train_values: np.ndarray) -> Bounds:
    """The bounds of ``rule`` given the train split's scores (non-finite scores are left out)."""
    values = np.asarray(train_values, dtype=np.float64)
    values = values[np.isfinite(values)]
    report: dict[str, Any] = {"mode": rule.mode, "train_items": int(len(values))}
    if rule.mode == "none":
        return Bounds(None, None, report)
    if rule.mode == "hardcode":
        if rule.bounds is None:  # FilterSettings.rules gives the reconstruction scores' default, refuses others
            raise ValueError("a hardcode rule needs bounds")
        low, high = (None if b is None else float(b) for b in rule.bounds)
        return _one_sided(rule, low, high, report)

    low = high = None
    if rule.mode == "median":
        report["k"] = rule.k
        if len(values):
            q1, q3 = (float(q) for q in np.quantile(values, [0.25, 0.75]))
            iqr = q3 - q1
            low, high = q1 - rule.k * iqr, q3 + rule.k * iqr
            report["statistics"] = {"q1": q1, "median": float(np.median(values)), "q3": q3, "iqr": iqr}
    elif rule.mode == "mean":
        report.update(k=rule.k, ddof=rule.ddof)
        if len(values) > rule.ddof:
            mean, std = float(values.mean()), float(values.std(ddof=rule.ddof))
            low, high = mean - rule.k * std, mean + rule.k * std
            report["statistics"] = {"mean": mean, "std": std}
    else:  # percentile
        report.update(lower_quantile=rule.lower_quantile, upper_quantile=rule.upper_quantile)
        if len(values):
            low, high = (float(q) for q in np.quantile(values, [rule.lower_quantile, rule.upper_quantile]))
    if low is None:
        report["note"] = "no finite train scores: computed bounds undefined"
    report["computed"] = {"low": _number(low), "high": _number(high)}
    if rule.hard_low is not None:
        low = float(rule.hard_low)
    if rule.hard_high is not None:
        high = float(rule.hard_high)
    report["hard"] = {"low": rule.hard_low, "high": rule.hard_high}
    return _one_sided(rule, _number(low), _number(high), report)


def _one_sided(rule: FilterRule, low: float | None, high: float | None, report: dict[str, Any]) -> Bounds:
    """The bounds with the side the rule drops left open."""
    if rule.side != "both":
        report["side"] = rule.side
        low, high = (low, None) if rule.side == "lower" else (None, high)
    report.update(low=low, high=high)
    return Bounds(low, high, report)


@dataclass
class FilterResult:
    kept: np.ndarray  # bool per item
    reasons: list[str]  # "" for kept items
    bounds: dict[str, Bounds]  # per score


def _reason(name: str, value: float, bounds: Bounds) -> str:
    if not math.isfinite(value):
        return f"{name} is not finite"
    if bounds.low is not None and value < bounds.low:
        return f"{name} {value:.6g} below {bounds.low:.6g}"
    return f"{name} {value:.6g} above {bounds.high:.6g}"


def run_filters(
    scores: dict[str, np.ndarray], splits: np.ndarray, rules: dict[str, FilterRule], train_split: str = "train"
) -> FilterResult:
    """Bounds per ruled score from the ``train_split`` items, applied to all; kept = kept by every rule."""
    splits = np.asarray(splits).astype(str)
    train = splits == train_split
    n = len(splits)
    kept = np.ones(n, dtype=bool)
    reasons: list[list[str]] = [[] for _ in range(n)]
    all_bounds: dict[str, Bounds] = {}
    for name, rule in rules.items():
        values = np.asarray(scores[name], dtype=np.float64)
        bounds = compute_bounds(rule, values[train])
        keep = bounds.keep(values)
        bounds.report["rejected"] = {s: int((~keep & (splits == s)).sum()) for s in sorted(set(splits))}
        for i in np.flatnonzero(~keep):
            reasons[i].append(_reason(name, float(values[i]), bounds))
        kept &= keep
        all_bounds[name] = bounds
    return FilterResult(kept, ["; ".join(r) for r in reasons], all_bounds)
