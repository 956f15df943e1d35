"""Everything derived from the stored scores: summaries, filter decisions, groups, plots.

Written next to the scores by the score job (after commit) and again by
``ray-pipelines filter`` (from stored scores, nothing recomputed)::

    summary/<split>.csv       the summary CSV format (one row) per split
    summary.json              the same, plus item counts, for every split
    filter.json               the settings, the bounds actually used, counts
    kept.txt / ignored.txt    input keys, one per line (keep_list / ignore_list for other jobs;
                              a key with a line break, a leading '#' or spaces: a JSON string)
    decisions.csv             filename,item,split,kept,reason per item (and per failed input)
    groups.csv                split,group,label,decided_by,items,kept_items,votes
    histograms/<score>.png    histogram per split with the cut lines, one per score
    scatter.png               two scores per item, kept and ignored in two colours

What an earlier run wrote there for a split or score the scores no longer have (a split whose
inputs were all pruned, another scores' filter run into the same folder) is removed, and so is its
scatter.png when no scatter is drawn now: the outputs are those of a fresh run. Only what an earlier
run recorded (summary.json's splits, filter.json's ``plots``) is removed; other files there stay.

An input key is kept when every one of its items is kept; a key with an
ignored item, or that failed to decode (errors.jsonl), is ignored. Every
key therefore lands in exactly one of kept.txt and ignored.txt.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import ConfigError
from ..key_lines import key_line
from ..storage import Storage, get_fs, split_protocol
from .filters import FilterResult, FilterRule, run_filters
from .groups import vote_groups
from .plots import figure_png, histogram_figure, scatter_figure
from .summary import split_summary, summary_csv
from .table import ScoreTable, live_errors, read_predictions

# Rules a score gets when the section does not name it: the seed's median/IQR for the
# reconstruction scorer's two scores; every other score is only filtered when named.
DEFAULT_RULES = {"reconstruction_loss": FilterRule(), "signal_energy": FilterRule()}
# The seed's hard bounds of those two scores, a hardcode rule's when it gives none; a hardcode rule of
# any other score must give its bounds (these numbers cut a DNSMOS score or a level at random).
HARDCODE_DEFAULT = (1.5, 7.0)


def with_default_bounds(rule: FilterRule) -> FilterRule:
    """``rule``, a hardcode rule without bounds given :data:`HARDCODE_DEFAULT` (only the reconstruction
    scores' rules may lack them: :class:`FilterSettings` refuses the others)."""
    if rule.mode == "hardcode" and rule.bounds is None:
        return rule.model_copy(update={"bounds": HARDCODE_DEFAULT})
    return rule


def local_file_problem(path: str) -> str:
    """Why the local file ``path`` cannot be read ("" when it can)."""
    _, resolved = get_fs(path)
    if not os.path.exists(resolved):
        return f"no such file: {path}"
    if not os.path.isfile(resolved):
        return f"not a file: {path}"
    if not os.access(resolved, os.R_OK):
        return f"not readable: {path}"
    return ""


def check_predictions_readable(predictions: str | None, storage_options: dict[str, Any] | None) -> None:
    """Raises ConfigError when the ``filter.predictions`` file is not there (a URL is asked; a local path
    was checked with the config): run before the score job writes anything."""
    if predictions is None:
        return
    if split_protocol(predictions)[0] == "file":
        problem = local_file_problem(predictions)
    else:
        fs, path = get_fs(predictions, storage_options)
        problem = "" if fs.isfile(path) else f"no such file: {predictions}"
    if problem:
        raise ConfigError(f"filter.predictions: {problem}")


COMPUTED = ("median", "mean", "percentile")  # the modes whose bounds come from the train split's scores


class FilterSettings(BaseModel):
    """The filter section of a score config (also a config file of its own for ``ray-pipelines filter``).

    Besides the settings below, every key is a score column's name and its value that score's
    :class:`FilterRule` (``dnsmos_ovrl: {mode: hardcode, bounds: [3.0, null]}``); ``null`` takes a rule
    out (``--set filter.dnsmos_ovrl=null`` on a packaged config run without the dnsmos scorer), a default
    rule's too: ``signal_energy: null`` stays in the section, so that score has no rule.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, FilterRule | None] = Field(init=False)
    train_split: str = Field("train", description="The split whose scores define the bounds.")
    all_filtered_label: str = Field(
        "good", description="Label of a group whose items were all filtered out; also wins ties it takes part in."
    )
    predictions: str | None = Field(
        None, description="CSV (filename, prediction[, item]) voted on per group instead of the class labels."
    )
    histogram_bins: int = Field(50, ge=1)
    scatter: tuple[str, str] | None = Field(
        None, description="The two scores of scatter.png (default: the first two with a rule, else the first two)."
    )

    @model_validator(mode="before")
    @classmethod
    def _null_rules_left_out(cls, data: Any) -> Any:
        """A null rule is no rule: left out, except for a score with a default rule, where the null is kept
        (and recorded in filter.json): leaving it out gave that score its default rule back."""
        if isinstance(data, dict):
            return {
                key: value
                for key, value in data.items()
                if value is not None or key in cls.model_fields or key in DEFAULT_RULES
            }
        return data

    @field_validator("predictions")
    @classmethod
    def _predictions_readable(cls, value: str | None) -> str | None:
        """A local predictions file is there and readable (it was read only after every item was scored,
        after kept.txt was rewritten); a URL is asked before the job writes anything
        (:func:`check_predictions_readable`)."""
        if value is not None and split_protocol(value)[0] == "file":
            problem = local_file_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _hardcode_rules_have_bounds(self) -> FilterSettings:
        for name, rule in self.named_rules.items():
            if rule.mode == "hardcode" and rule.bounds is None and name not in DEFAULT_RULES:
                raise ValueError(
                    f"{name}: mode hardcode needs bounds: [low, high], null leaving a side open "
                    f"(e.g. {name}: {{mode: hardcode, bounds: [3.0, null]}}); only "
                    f"{' and '.join(DEFAULT_RULES)} default to {list(HARDCODE_DEFAULT)}"
                )
        return self

    @property
    def named_rules(self) -> dict[str, FilterRule]:
        """The rules the section gives (a null, taking a default rule out, is none)."""
        return {name: rule for name, rule in (self.__pydantic_extra__ or {}).items() if rule is not None}

    @property
    def removed_rules(self) -> set[str]:
        """The scores whose default rule the section takes out (``signal_energy: null``)."""
        return {name for name, rule in (self.__pydantic_extra__ or {}).items() if rule is None}

    @classmethod
    def check_setting_names(cls, data: dict[str, Any], section: str = "filter.") -> None:
        """Raises ConfigError for a key that is not a setting, given a setting's value (not a rule's
        mapping) and close to a setting's name: ``trainsplit=val`` was told as a rule for a score
        ``trainsplit`` the scores do not have, or that is not a mapping."""
        for name, value in data.items():
            if not isinstance(name, str) or name in cls.model_fields or value is None or isinstance(value, dict):
                continue
            if close := difflib.get_close_matches(name, list(cls.model_fields), n=1, cutoff=0.6):
                raise ConfigError(f"{section}{name}: unknown key; did you mean {section}{close[0]}?")

    @staticmethod
    def check_names(
        rules: list[str], scatter: tuple[str, ...] | None, scores: tuple[str, ...] | list[str], section: str = "filter."
    ) -> None:
        """Raises ValueError naming the ``rules`` and ``scatter`` scores that are not among ``scores``,
        the closest score to each and the ``--set`` that takes each out (``section``: the keys' prefix)."""
        rules_unknown = [name for name in rules if name not in scores]
        scatter_unknown = [name for name in scatter or () if name not in scores]
        if not rules_unknown and not scatter_unknown:
            return
        unknown = sorted({*rules_unknown, *scatter_unknown})
        named = rules_unknown + ["scatter"] * bool(scatter_unknown)
        ways_out = [f"{section}{name}=null" for name in named]
        guesses = [
            f"{name}: did you mean {close[0]}?"
            for name in unknown
            if (close := difflib.get_close_matches(name, list(scores), n=1, cutoff=0.6))
        ]
        raise ValueError(
            f"filter names {', '.join(unknown)}, which the scores do not have "
            f"(scores: {'; '.join([', '.join(scores) or 'none', *guesses])}): add the scorers that give them, "
            f"or take them out of the filter section ({' '.join('--set ' + way for way in ways_out)})"
        )

    @classmethod
    def check_section_names(
        cls, data: dict[str, Any], scores: tuple[str, ...] | list[str], section: str = "filter."
    ) -> None:
        """:meth:`check_names` on a filter section as written, before its rules are validated: a rule
        for a score there is not (``--set filter.speech_fractio.bounds=...``, a mistyped name) is told as
        that, not as a problem of the new rule the ``--set`` made (it names no mode)."""
        cls.check_setting_names(data, section)
        rules = [  # a key that is not text (YAML's `1:` or `yes:`) is left to the validation's own message
            name
            for name, rule in data.items()
            if isinstance(name, str) and name not in cls.model_fields and rule is not None
        ]
        scatter = data.get("scatter")
        named = isinstance(scatter, list) and all(isinstance(name, str) for name in scatter)
        cls.check_names(rules, tuple(scatter) if named else None, scores, section)

    def rules(self, scores: tuple[str, ...] | list[str], section: str = "filter.") -> dict[str, FilterRule]:
        """The rule of each score that has one (named, or a default), in score order.

        Raises ValueError naming any rule or scatter score that is not among ``scores``, with the
        ``--set`` that takes each out (``section``: the keys' prefix there; the filter tool's has none).
        """
        self.check_names(list(self.named_rules), self.scatter, scores, section)
        named = {name: with_default_bounds(rule) for name, rule in self.named_rules.items()}
        defaults = {name: rule for name, rule in DEFAULT_RULES.items() if name not in self.removed_rules}
        return {name: named.get(name, defaults.get(name)) for name in scores if name in named or name in defaults}

    def train_split_problem(self, splits: Iterable[str], scores: tuple[str, ...] | list[str]) -> str | None:
        """Why ``train_split`` cannot give the rules their bounds: a rule computes them (median, mean,
        percentile) and the scores, which have rows, hold no such split (a mistyped ``training``): every
        such rule then kept everything, ``[-inf, inf]``, without a word. None when it can."""
        present = sorted(set(splits))
        computed = [name for name, rule in self.rules(scores).items() if rule is not None and rule.mode in COMPUTED]
        if not present or not computed or self.train_split in present:
            return None
        return (
            f"train_split {self.train_split!r} is no split of the scores (splits: {', '.join(present)}); the "
            f"bounds of {', '.join(computed)} come from it"
        )

    @staticmethod
    def train_split_fix(splits: Iterable[str]) -> str:
        """The ``--set`` that takes the bounds from a split the scores have, naming them all (which to compute
        bounds from is the user's choice: the first by name could be a test split)."""
        named = sorted(repr(split) if split == "" else split for split in set(splits))
        return f"--set train_split=<one of: {', '.join(named)}>"

    @classmethod
    def keeps_everything(cls, problem: str, splits: Iterable[str], rerun: str = "") -> str:
        """The warning of scores without the job's own train split (the job's and the filter tool's alike):
        ``problem`` (:meth:`train_split_problem`), and the rerun (``rerun``: the command before the ``--set``)."""
        fix = cls.train_split_fix(splits)
        return (
            f"{problem}: they keep everything ({rerun}{fix} reruns the rules with their bounds from a split the "
            "scores have)"
        )

    def scatter_pair(self, scores: tuple[str, ...] | list[str]) -> tuple[str, str] | None:
        if self.scatter:
            return self.scatter
        ruled = list(self.rules(scores))
        pair = (ruled + [name for name in scores if name not in ruled])[:2]
        return (pair[0], pair[1]) if len(pair) == 2 else None


def _csv(rows: list[list[Any]], header: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _json_number(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def remove_unwritten(storage: Storage, recorded: str, key: str, written: list[str]) -> None:
    """Remove what an earlier run recorded in ``recorded`` (its ``key``: the files it wrote) and this run did
    not write: the summary of a split whose every input was pruned, the histograms of scores an earlier filter
    run into the same folder had. Only files a run of this module recorded: a user's own files there stay."""
    try:
        earlier = storage.read_json(recorded) if storage.exists(recorded) else {}
    except (ValueError, OSError):  # unreadable: nothing known to remove
        earlier = {}
    listed = earlier.get(key) if isinstance(earlier, dict) else None
    stale = [path for path in listed or [] if isinstance(path, str) and path not in set(written)]
    storage.remove_many(stale)


def summary_files(summaries: dict[str, Any]) -> list[str]:
    return [f"summary/{split or 'all'}.csv" for split in summaries]


def write_summaries(storage: Storage, table: ScoreTable, bins: int = 50) -> dict[str, dict[str, Any]]:
    summaries = {}
    splits = table["split"].astype(str)
    for split in sorted(set(splits)):
        rows = splits == split
        summary = split_summary({name: table[name][rows] for name in table.scores}, bins)
        storage.write_bytes(f"summary/{split or 'all'}.csv", summary_csv(summary).encode())
        summaries[split] = {k: (_json_number(v) if isinstance(v, float) else v) for k, v in summary.items()}
    earlier = storage.read_json("summary.json") if storage.exists("summary.json") else {}
    stale = set(summary_files(earlier if isinstance(earlier, dict) else {})) - set(summary_files(summaries))
    storage.remove_many(sorted(stale))  # an earlier run's split that is no longer there (summary.json names them)
    storage.write_json("summary.json", summaries)
    return summaries


def item_labels(
    table: ScoreTable, settings: FilterSettings, storage_options: dict[str, Any] | None
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """What each item votes for: its prediction when a predictions file is given, else its class; and,
    with predictions, how well they matched the scored items (``predictions_coverage``)."""
    if not settings.predictions:
        return table["class"], None
    predictions = read_predictions(settings.predictions, storage_options)
    items = [(key, int(item)) for key, item in zip(table["key"], table["item"])]
    labels = np.array([predictions.get(at, "") for at in items], dtype=object)
    return labels, predictions_coverage(predictions, items)


def predictions_coverage(predictions: dict[tuple[str, int], str], items: list[tuple[str, int]]) -> dict[str, Any]:
    """How many scored items a predictions CSV names, and its rows naming none (a path written another
    way than the scores' keys: ``clip.wav`` for ``train/good/clip.wav``), the first five of them."""
    scored = set(items)
    unmatched = sorted(at for at in predictions if at not in scored)
    return {
        "items": len(items),
        "items_with_prediction": sum(at in predictions for at in items),
        "rows_naming_no_item": len(unmatched),
        "first_unmatched": [f"{key}#{item}" if item else key for key, item in unmatched[:5]],
    }


def filter_warnings(report: dict[str, Any]) -> list[str]:
    """What a filter run did that its user did not likely mean (the score job logs them, the tool prints them)."""
    coverage = report["groups"].get("predictions")
    if not coverage:
        return []
    matched, items, unmatched = coverage["items_with_prediction"], coverage["items"], coverage["rows_naming_no_item"]
    if matched == items and not unmatched:
        return []
    warning = f"filter.predictions: {matched} of {items} scored items have a prediction (the others do not vote)"
    if unmatched:
        shown = ", ".join(coverage["first_unmatched"])
        more = unmatched - len(coverage["first_unmatched"])
        warning += (
            f"; {unmatched} {'row names' if unmatched == 1 else 'rows name'} no scored item "
            f"({shown}{f', {more} more' if more else ''}): "
            "a row's filename must be the item's key (scores.csv's filename column)"
        )
    return [warning]


def key_lists(table: ScoreTable, kept: np.ndarray, errors: dict[str, str]) -> tuple[list[str], list[str]]:
    """(kept keys, ignored keys): a key is kept when all its items are, and it has no error."""
    all_kept: dict[str, bool] = {}
    for key, keep in zip(table["key"], kept):
        all_kept[key] = all_kept.get(key, True) and bool(keep)
    for key in errors:
        all_kept[key] = False
    return sorted(k for k, v in all_kept.items() if v), sorted(k for k, v in all_kept.items() if not v)


def write_filter_outputs(
    storage: Storage,
    table: ScoreTable,
    settings: FilterSettings,
    errors: list[tuple[str, int, str]] | dict[str, str] | None = None,
    scores_from: str = "",
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the filters on ``table`` and write filter.json, the key lists, decisions, groups, plots.

    ``errors``: errors.jsonl entries ``(key, index, reason)`` (stale ones are
    dropped), or ``{key: reason}`` already resolved.
    """
    errors = errors if isinstance(errors, dict) else live_errors(table, errors or [])
    splits = table["split"].astype(str)
    rules = settings.rules(table.scores)
    result: FilterResult = run_filters({name: table[name] for name in rules}, splits, rules, settings.train_split)
    labels, coverage = item_labels(table, settings, storage_options)  # read before any output is replaced
    kept_keys, ignored_keys = key_lists(table, result.kept, errors)
    storage.write_bytes("kept.txt", "".join(f"{key_line(k)}\n" for k in kept_keys).encode())
    storage.write_bytes("ignored.txt", "".join(f"{key_line(k)}\n" for k in ignored_keys).encode())

    decisions = [
        [table["key"][i], int(table["item"][i]), splits[i], int(result.kept[i]), result.reasons[i]]
        for i in range(len(table))
    ]
    decisions += [[key, -1, "", 0, f"error: {reason}"] for key, reason in sorted(errors.items())]
    storage.write_bytes("decisions.csv", _csv(decisions, ["filename", "item", "split", "kept", "reason"]))

    groups = vote_groups(table["group"], splits, labels, result.kept, settings.all_filtered_label)
    storage.write_bytes(
        "groups.csv",
        _csv(
            [[g.split, g.group, g.label, g.decided_by, g.items, g.kept_items, g.votes_text()] for g in groups],
            ["split", "group", "label", "decided_by", "items", "kept_items", "votes"],
        ),
    )

    for name in table.scores:
        bounds = result.bounds.get(name)
        by_split = {s: table[name][splits == s] for s in sorted(set(splits))}
        low, high = (bounds.low, bounds.high) if bounds else (None, None)
        figure = histogram_figure(by_split, name, low, high, settings.histogram_bins)
        storage.write_bytes(f"histograms/{name}.png", figure_png(figure))
    plots = [f"histograms/{name}.png" for name in table.scores]
    pair = settings.scatter_pair(table.scores)
    if pair:
        figure = scatter_figure(table[pair[0]], table[pair[1]], result.kept, *pair)
        storage.write_bytes("scatter.png", figure_png(figure))
        plots.append("scatter.png")
    remove_unwritten(storage, "filter.json", "plots", plots)

    counts = {
        s: {
            "items": int((splits == s).sum()),
            "kept": int((result.kept & (splits == s)).sum()),
            "ignored": int((~result.kept & (splits == s)).sum()),
        }
        for s in sorted(set(splits))
    }
    report = {
        "scores": scores_from,
        "train_split": settings.train_split,
        "bounds": {name: bounds.report for name, bounds in result.bounds.items()},
        "counts": counts,
        "keys": {"kept": len(kept_keys), "ignored": len(ignored_keys), "errors": len(errors)},
        "groups": {
            "groups": len(groups),
            "all_filtered": sum(g.decided_by == "all_filtered" for g in groups),
            "ties": sum(g.decided_by == "tie" for g in groups),
            "labels": "predictions" if settings.predictions else "class",
            **({"predictions": coverage} if coverage else {}),
        },
        "settings": settings.model_dump(mode="json"),
        "plots": plots,  # what the next run into this folder removes if it does not write it again
    }
    storage.write_json("filter.json", report)
    return report


def format_filter_report(report: dict[str, Any]) -> str:
    """A few lines for people: the bounds used and what was kept."""
    lines = [f"filter (bounds from the {report['train_split']!r} split)"]
    for name, bounds in report["bounds"].items():
        low, high = bounds.get("low"), bounds.get("high")
        span = (
            "keep all"
            if bounds["mode"] == "none"
            else f"keep [{'-inf' if low is None else f'{low:.6g}'}, {'inf' if high is None else f'{high:.6g}'}]"
        )
        lines.append(
            f"  {name:<20} {bounds['mode']:<10} {span}" + (f"  ({bounds['note']})" if "note" in bounds else "")
        )
    for split, c in report["counts"].items():
        lines.append(f"  {split or 'all':<20} {c['kept']} kept, {c['ignored']} ignored of {c['items']}")
    k = report["keys"]
    lines.append(f"  keys                 {k['kept']} kept, {k['ignored']} ignored ({k['errors']} errors)")
    g = report["groups"]
    if g["groups"]:
        lines.append(f"  groups               {g['groups']} ({g['ties']} ties, {g['all_filtered']} all filtered)")
    return "\n".join(lines)
