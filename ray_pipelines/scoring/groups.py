"""Group-level labels: a majority vote over the items the filters kept.

A group is what ``group_pattern`` captures from an item's path (a patient
id, a session); groups are formed within a split. Each kept item votes for
its label (its prediction when predictions are given, else its class).

Ties: when several labels share the most votes, ``preferred`` (the
``all_filtered_label``, "good" by default) wins if it is one of them,
otherwise the alphabetically first of the tied labels wins. The rule only
looks at the labels and counts, so the result never depends on item order.

A group whose items were all filtered out (or whose kept items carry no
label) gets ``all_filtered_label``. Items without a group (the pattern did
not match) are left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def majority_vote(labels: Sequence[str], preferred: str | None = None) -> tuple[str | None, str]:
    """``(winner, how)``: how is ``"majority"``, ``"tie"`` or ``"no_votes"`` (winner None)."""
    counts = Counter(label for label in labels if label != "")
    if not counts:
        return None, "no_votes"
    top = max(counts.values())
    tied = sorted(label for label, count in counts.items() if count == top)
    if len(tied) == 1:
        return tied[0], "majority"
    return (preferred if preferred in tied else tied[0]), "tie"


@dataclass
class GroupResult:
    split: str
    group: str
    label: str
    decided_by: str  # majority | tie | all_filtered | no_votes
    items: int
    kept_items: int
    votes: dict[str, int]

    def votes_text(self) -> str:
        return ";".join(f"{label}={count}" for label, count in sorted(self.votes.items()))


def vote_groups(
    groups: Sequence[str],
    splits: Sequence[str],
    labels: Sequence[str],
    kept: Sequence[bool],
    all_filtered_label: str = "good",
) -> list[GroupResult]:
    """One result per (split, group), sorted; items with an empty group are skipped."""
    members: dict[tuple[str, str], list[int]] = {}
    for i, (group, split) in enumerate(zip(groups, splits)):
        if group:
            members.setdefault((str(split), str(group)), []).append(i)
    kept = np.asarray(kept, dtype=bool)
    results = []
    for (split, group), indices in sorted(members.items()):
        votes = [str(labels[i]) for i in indices if kept[i]]
        kept_items = int(kept[indices].sum())
        winner, how = majority_vote(votes, all_filtered_label)
        if kept_items == 0:
            winner, how = all_filtered_label, "all_filtered"
        elif winner is None:
            winner = all_filtered_label
        results.append(
            GroupResult(split, group, winner, how, len(indices), kept_items, dict(Counter(v for v in votes if v)))
        )
    return results
