"""Group majority votes over kept items: ties, all-filtered groups (no Ray)."""

from __future__ import annotations

from ray_pipelines.scoring.groups import majority_vote, vote_groups


def test_majority_vote_and_its_tie_rule():
    assert majority_vote(["bad", "good", "bad"], "good") == ("bad", "majority")
    # the preferred (all_filtered) label wins a tie it is part of, whatever the order
    assert majority_vote(["bad", "good"], "good") == ("good", "tie")
    assert majority_vote(["good", "bad"], "good") == ("good", "tie")
    assert majority_vote(["bad", "bad", "good", "good", "meh"], "good") == ("good", "tie")
    # otherwise the alphabetically first tied label
    assert majority_vote(["zeta", "alpha", "zeta", "alpha", "good"], "good") == ("alpha", "tie")
    assert majority_vote(["alpha", "zeta", "alpha", "zeta"], "good") == ("alpha", "tie")
    assert majority_vote([], "good") == (None, "no_votes")
    assert majority_vote(["", ""], "good") == (None, "no_votes")


def test_vote_groups_counts_only_kept_items():
    groups = ["p1", "p1", "p1", "p2", "p2", "p2", "p3", "p3", "", "p1"]
    splits = ["train"] * 9 + ["val"]
    labels = ["bad", "bad", "good", "bad", "bad", "good", "bad", "good", "bad", "bad"]
    kept = [True, True, True, False, False, True, False, False, True, True]
    results = {(r.split, r.group): r for r in vote_groups(groups, splits, labels, kept, all_filtered_label="good")}
    assert sorted(results) == [("train", "p1"), ("train", "p2"), ("train", "p3"), ("val", "p1")]  # "" left out
    p1 = results["train", "p1"]
    assert (p1.label, p1.decided_by, p1.items, p1.kept_items, p1.votes) == (
        "bad",
        "majority",
        3,
        3,
        {"bad": 2, "good": 1},
    )
    # p2's majority label (bad) was filtered out: the vote over kept items says good
    p2 = results["train", "p2"]
    assert (p2.label, p2.decided_by, p2.votes) == ("good", "majority", {"good": 1})
    p3 = results["train", "p3"]
    assert (p3.label, p3.decided_by, p3.kept_items, p3.votes) == ("good", "all_filtered", 0, {})
    assert results["val", "p1"].label == "bad"  # groups are formed within a split
    assert p1.votes_text() == "bad=2;good=1"


def test_all_filtered_label_is_configurable_and_breaks_ties():
    groups, splits = ["a", "a", "b", "b"], ["train"] * 4
    labels = ["sick", "healthy", "sick", "healthy"]
    results = vote_groups(groups, splits, labels, [True, True, False, False], all_filtered_label="healthy")
    assert [(r.group, r.label, r.decided_by) for r in results] == [
        ("a", "healthy", "tie"),
        ("b", "healthy", "all_filtered"),
    ]
    # a kept item without a label has no vote: the group falls back to the configured label
    results = vote_groups(["c"], ["train"], [""], [True], all_filtered_label="healthy")
    assert (results[0].label, results[0].decided_by) == ("healthy", "no_votes")
