"""Stratified split by song: every kept label in every split, and no song ever moves.

How a song gets its split:

1. Its hash point ``unit_interval(seed, "split", key)`` in [0, 1) falls in one
   of the splits' intervals, laid out in name order so that reordering the
   config changes nothing (test [0, 0.2), train [0.2, 0.9), validate
   [0.9, 1.0) by default). This depends on the song alone.
2. Balancing, per label: for each split (in name order) that has none of
   the label's songs, the label's *new* song whose hash point is closest to
   that split's interval moves into it, taken only from a split that keeps
   at least one other song of the label. Ties go to the smaller key.
3. Songs the output already assigned (``fixed``, read back from its
   ``splits.json``) keep their split and are never candidates for moving.

Guarantees (tests/test_features_split.py):

- Same library, seed and fractions on a fresh output -> the same assignment
  (a pure function of the keys and their labels; no listing order, worker or
  run enters it).
- Rerunning on the same output after adding songs never moves an existing
  song: earlier assignments are read back and kept.
- Every label with at least as many songs as there are (non-empty) splits
  has a song in each split, provided its earlier songs did.

Why the memory in step 3: without it, no rule can guarantee both. A song
moved by balancing would have to move back once a newly added song lands in
its split by hash, or else the assignment would depend on the order songs
arrived in. Any assignment that never moves a song when others are added is,
for each song, a function of that song alone, and such a function cannot
promise every small label a song in every split. So the hash point decides
almost everything (a label of n songs needs balancing with probability about
0.9^n for a 10 % split), and the output remembers the rare moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..seeding import unit_interval

DEFAULT_SPLITS = {"train": 0.7, "validate": 0.1, "test": 0.2}


def hash_point(seed: int, key: str) -> float:
    return unit_interval(seed, "split", key)


def intervals(fractions: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Each split's ``[low, high)`` on the unit interval, laid out in name order."""
    out, edge = {}, 0.0
    for name, fraction in sorted(fractions.items()):
        out[name] = (edge, edge + fraction)
        edge += fraction
    return out


def split_of_point(point: float, fractions: dict[str, float]) -> str:
    spans = intervals(fractions)
    for name, (low, high) in spans.items():
        if low <= point < high:
            return name
    return next(name for name in reversed(spans) if fractions[name] > 0)  # rounding past the last edge


def distance(point: float, span: tuple[float, float]) -> float:
    low, high = span
    return low - point if point < low else max(0.0, point - high)


@dataclass
class SplitAssignment:
    splits: dict[str, str]  # key -> split
    moved: list[str] = field(default_factory=list)  # keys balancing moved this time
    uncovered: dict[str, list[str]] = field(default_factory=dict)  # label -> splits it still lacks


def assign_splits(
    labels: dict[str, str], fractions: dict[str, float], seed: int, fixed: dict[str, str] | None = None
) -> SplitAssignment:
    """Assign every key of ``labels`` (key -> label) to a split; ``fixed`` keys keep theirs."""
    fixed = fixed or {}
    spans = intervals(fractions)
    needed = [name for name, fraction in sorted(fractions.items()) if fraction > 0]
    result = SplitAssignment(splits={})
    by_label: dict[str, list[str]] = {}
    for key in sorted(labels):
        by_label.setdefault(labels[key], []).append(key)

    for label, keys in sorted(by_label.items()):
        points = {key: hash_point(seed, key) for key in keys if key not in fixed}
        split = {key: fixed[key] if key in fixed else split_of_point(points[key], fractions) for key in keys}
        for target in needed:
            members = {name: [k for k in keys if split[k] == name] for name in fractions}
            if members[target]:
                continue
            candidates = [k for k in points if len(members[split[k]]) > 1]
            if not candidates:
                result.uncovered.setdefault(label, []).append(target)
                continue
            chosen = min(candidates, key=lambda k: (distance(points[k], spans[target]), k))
            split[chosen] = target
            result.moved.append(chosen)
        result.splits.update(split)
    result.moved.sort()
    return result
