"""da.select (train candidates, pick by compare's rule without target labels) and the
leave-one-shift-out rule chooser of benchmarks/selection.py."""

import importlib
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import mlp_backbone
from scipy import stats

import domadapt as da
from domadapt.validators.compare import RECOMMENDING, SOURCE_DROP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
selection = importlib.import_module("selection")


def build_adapter(strategies, learning_rate=3e-3):
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return adapter


def rule_arithmetic(table):
    """The pick, recomputed from the table alone: best mean rank over the deciding validators."""
    eligible = [c for c in table.scores if c not in table.excluded]
    deciding = ([n for n in RECOMMENDING if n in table.directions]
                or [n for n in table.directions if n != "agreement"] or list(table.directions))
    sign = {n: 1.0 if table.directions[n] == "higher" else -1.0 for n in deciding}
    ranks = {n: stats.rankdata([-sign[n] * table.scores[c][n] for c in eligible]) for n in deciding}
    mean_rank = [np.mean([ranks[n][i] for n in deciding]) for i in range(len(eligible))]
    return eligible[int(np.argmin(mean_rank))]


def test_select_trains_every_candidate_adds_source_only_and_picks_by_the_rule(moons):
    source_x, source_y, target_x, _ = moons  # target labels are never passed
    source_copy, user_mcc = source_x.copy(), da.MCC()
    candidates = {"mcc": [user_mcc],
                  "ascent": lambda: build_adapter([], learning_rate=-3e-3)}  # gradient ascent: a broken candidate

    with pytest.warns(UserWarning, match="added 'source-only'"):
        result = da.select(candidates, (source_x, source_y), target_x, build_adapter=build_adapter,
                           epochs=3, batch_size=64, seed=0, verbose=0)
    assert list(result.adapters) == ["mcc", "ascent", "source-only"]
    assert result.name == result.table.recommended == rule_arithmetic(result.table)
    assert result.adapter is result.adapters[result.name]
    # The candidates really trained on the 400 kept images (source accuracy read on the 100
    # held out: 0.88 and 0.27 measured); the broken one is confident (IM is highest) but wrong.
    accuracy = {c: s["source_accuracy"] for c, s in result.table.scores.items()}
    assert min(accuracy["mcc"], accuracy["source-only"]) > 0.8 > 0.5 > accuracy["ascent"]
    if SOURCE_DROP is not None:
        assert result.table.excluded.get("ascent") == "source accuracy drop" and result.name != "ascent"
    assert any("held out 100 of 500" in note for note in result.notes)
    # Nothing the user passed was changed: their strategy object was copied, not set up.
    assert not user_mcc.built and np.array_equal(source_x, source_copy) and candidates["mcc"] == [user_mcc]


def test_select_checks_its_arguments_before_training():
    xs, ys, xt = np.zeros((20, 2), "float32"), np.zeros(20, int), np.zeros((10, 2), "float32")
    with pytest.raises(ValueError, match="`build_adapter` is required"):
        da.select({"mcc": [da.MCC()]}, (xs, ys), xt)
    with pytest.raises(ValueError, match="no source-only entry"):
        da.select({"own": lambda: build_adapter([da.MCC()])}, (xs, ys), xt)
    with pytest.raises(TypeError, match="candidates"):
        da.select([da.MCC()], (xs, ys), xt, build_adapter=build_adapter)
    with pytest.raises(TypeError, match="'mcc' must be strategies"):
        da.select({"mcc": 3}, (xs, ys), xt, build_adapter=build_adapter)
    with pytest.raises(ValueError, match="`validation_split`"):
        da.select({"so": []}, (xs, ys), xt, build_adapter=build_adapter, validation_split=1.5)


def candidate(accuracy, information, reverse, source_accuracy=0.9):
    return {"target_accuracy": accuracy, "collapsed": False,
            "validators": {"source_accuracy": source_accuracy, "information_maximization": information,
                           "reverse": reverse}}


def test_leave_one_shift_out_judges_a_rule_on_the_shift_it_was_not_chosen_on():
    # IM picks the best candidate on shifts a and b and the worst on c; reverse always picks a middling one.
    good = {"source_only": candidate(0.5, 1.0, 0.7), "x": candidate(0.9, 2.0, 0.1), "y": candidate(0.6, 0.5, 0.9)}
    bad = {"source_only": candidate(0.5, 1.0, 0.7), "x": candidate(0.2, 2.0, 0.1), "y": candidate(0.6, 0.5, 0.9)}
    groups = {"a": [good, good], "b": [good, good], "c": [bad, bad]}
    im, reverse = selection.Rule(("information_maximization",), None, False), selection.Rule(("reverse",), None, False)
    chosen = selection.leave_one_shift_out([im, reverse], groups)
    # Held out c: IM wins on a and b (0.9 vs 0.6) and is then scored on c, where it picks 0.2.
    assert chosen["c"][0] == im
    assert selection.shift_summary("c", *chosen["c"], groups, 0.8)["pick_mean"] == pytest.approx(0.2)
    # Held out a: on b and c IM averages 0.55 and reverse 0.6, so reverse is judged on a.
    assert chosen["a"][0] == chosen["b"][0] == reverse
    assert selection.shift_summary("a", *chosen["a"], groups, 0.8)["pick_mean"] == pytest.approx(0.6)
    # In-sample, IM looks best (0.667 > 0.6): the number the held-out procedure does not report.
    accuracies = selection.mean_pick_accuracies([im, reverse], groups)
    assert selection.choose_rule([im, reverse], accuracies, ["a", "b", "c"]) == im
    assert np.mean(list(accuracies[im].values())) == pytest.approx((0.9 + 0.9 + 0.2) / 3)


def test_a_richer_rule_must_win_beyond_the_shift_to_shift_spread():
    single = selection.Rule(("information_maximization",), None, False)
    pair = selection.Rule(("information_maximization", "reverse"), None, False)
    shifts = ["a", "b", "c", "d"]
    # The pair's mean is 0.5 points higher, but it wins and loses by 8-10 points from shift to shift:
    # mean difference 0.005, standard error 0.049.
    noisy = {single: dict.fromkeys(shifts, 0.70), pair: {"a": 0.80, "b": 0.62, "c": 0.78, "d": 0.62}}
    assert selection.choose_rule([single, pair], noisy, shifts, margin=0.0) == pair
    assert selection.choose_rule([single, pair], noisy, shifts, margin=0.05) == pair  # 0.005 > 0.05 x 0.049
    assert selection.choose_rule([single, pair], noisy, shifts, margin=1.0) == single
    # Held out one at a time, the pair chosen where it leads (held out b or d) picks 0.62 there; the
    # single rule always picks 0.70, so the nested choice of margin prefers the simpler rule.
    assert selection.choose_margin([single, pair], noisy, shifts) == max(selection.SIMPLICITY_MARGINS)
    assert selection.choose([single, pair], noisy, shifts) == (single, max(selection.SIMPLICITY_MARGINS))
    # A gain of 5 points on every shift has no spread: the pair is kept at any margin.
    steady = {single: dict.fromkeys(shifts, 0.70), pair: dict.fromkeys(shifts, 0.75)}
    assert all(selection.choose_rule([single, pair], steady, shifts, margin=m) == pair for m in selection.SIMPLICITY_MARGINS)
    assert selection.choose([single, pair], steady, shifts)[0] == pair
    # With two shifts no nested spread can be measured: margin 0, unless one margin is fixed.
    assert selection.choose_margin([single, pair], noisy, ["a", "b"]) == 0.0
    assert selection.choose([single, pair], noisy, ["a", "b"], margins=(2.0,)) == (single, 2.0)


def test_held_back_shifts_take_no_part_in_choosing_and_are_reported_with_the_frozen_choices():
    def rows_for(shift, accuracies_by_method, seeds=(0, 1)):
        rows = []
        for seed in seeds:
            for method, (accuracy, information) in accuracies_by_method.items():
                rows.append({"shift": shift, "method": method, "seed": seed, "backbone": "groupnorm",
                             "target_accuracy": accuracy, "source_accuracy": 0.9,
                             "validators": {"source_accuracy": 0.9, "information_maximization": information,
                                            "reverse": 1.0 - information}})
            rows.append({"shift": shift, "method": "oracle", "seed": seed, "backbone": "groupnorm",
                         "target_accuracy": 0.95, "source_accuracy": 0.5, "validators": {}})
        return rows

    # On the choosing shifts IM picks the best candidate (x); on the held-back one IM's pick (x) is the worst.
    choosing = rows_for("a", {"source_only": (0.5, 1.0), "x": (0.8, 2.0), "y": (0.6, 0.5)}) + rows_for(
        "b", {"source_only": (0.4, 1.0), "x": (0.7, 2.0), "y": (0.5, 0.5)})
    held = rows_for("h", {"source_only": (0.6, 1.0), "x": (0.3, 2.0), "y": (0.9, 0.5)})
    # A method only the held-back shift has, on a seed only it has: neither may decide which choosing runs count.
    held += rows_for("h", {"z": (0.5, 0.1)}, seeds=(0, 1, 2))
    alone = selection.evaluate(choosing)
    report = selection.evaluate(choosing + held, held_back=["h"])
    assert report["shifts"] == ["a", "b"] and report["held_back_shifts"] == ["h"]
    # The held-back shift changed no choice: the same rule, the same in-sample and held-out picks, the same data.
    for key in ("chosen_on_all_shifts", "held_out", "in_sample", "rows_used", "seeds", "seeds_left_out_partial"):
        assert report[key] == alone[key], key
    [shipped] = report["held_back_shipped"]
    assert shipped["picks"] == ["x", "x"] and shipped["pick_mean"] == pytest.approx(0.3)
    assert shipped["gap_closed"] == pytest.approx((0.3 - 0.6) / (0.95 - 0.6))
    assert shipped["best_candidate"] == "y" and shipped["best_mean"] == pytest.approx(0.9)
    # "Always the best method of the choosing shifts" is x too (0.75 mean there), chosen without h.
    assert report["held_back_fixed_method"][0]["picks"] == ["x", "x"]
    markdown = selection.render_markdown(report)
    assert "Held-back shifts: h" in markdown and "always x (no validator)" in markdown


def test_rule_guard_and_collapse_filter_and_partial_seeds():
    group = {"source_only": candidate(0.5, 1.0, 0.5, source_accuracy=0.9),
             "dropped": candidate(0.1, 3.0, 0.9, source_accuracy=0.6),
             "flat": candidate(0.1, 0.01, 0.8)}
    group["flat"]["collapsed"] = selection.unsupervised_collapse({"validators": {"information_maximization": 0.01}})
    assert group["flat"]["collapsed"] and not selection.unsupervised_collapse(
        {"validators": {"information_maximization": 1.0}, "target_top_class_share": 0.3})
    assert selection.Rule(("information_maximization",), None, False).pick(group) == "dropped"
    assert selection.Rule(("information_maximization",), 0.15, False).pick(group) == "source_only"
    assert selection.Rule(("reverse",), 0.15, False).pick(group) == "flat"
    assert selection.Rule(("reverse",), 0.15, True).pick(group) == "source_only"
    rows = [{"shift": "s", "method": m, "seed": seed, "backbone": "groupnorm", "target_accuracy": 0.5,
             "source_accuracy": 0.9, "validators": {"reverse": 0.5}}
            for seed, methods in ((0, ["source_only", "dann"]), (1, ["source_only"])) for m in methods]
    rows.append({**rows[0], "method": "oracle"})
    rows.append({**rows[0], "seed": 2, "validators": None})
    groups, seeds, left_out, used = selection.candidate_groups(rows)
    assert seeds == {"s": [0]} and left_out == {"s": [1]} and used == 2 and list(groups["s"][0]) == ["dann", "source_only"]


def test_recommend_is_compare_rule_and_compare_checks_the_rule_arguments():
    from domadapt.validators.compare import recommend

    oriented = {"source_accuracy": {"a": 0.90, "b": 0.88, "c": 0.50, "d": 0.89},
                "information_maximization": {"a": 1.2, "b": 1.9, "c": 2.2, "d": 2.0},
                "reverse": {"a": 0.9, "b": 0.8, "c": 0.1, "d": 0.7}}
    pick, mean_rank, excluded = recommend(oriented, by=("information_maximization", "reverse"), source_drop=0.15,
                                          collapsed=["d"])
    assert (pick, excluded) == ("a", {"c": "source accuracy drop", "d": "collapsed"})
    assert mean_rank == {"a": 1.5, "b": 1.5}  # a tie goes to the candidate listed first
    assert recommend(oriented, by=("information_maximization",), source_drop=None)[0] == "c"
    assert recommend(oriented, by=("information_maximization",), source_drop=0.15)[0] == "d"
    with pytest.raises(TypeError, match="`recommend_by`"):
        da.compare({"a": None}, recommend_by="reverse")
    with pytest.raises(ValueError, match="`source_drop`"):
        da.compare({"a": None}, source_drop=15)


def test_select_reads_a_target_dataset_once_so_every_candidate_is_scored_on_the_same_images(moons, monkeypatch):
    # Forwarded as a dataset, each validator read it again for each candidate: ~20 passes, and a shuffled
    # dataset gave every candidate another sample of the target to be scored on.
    import tensorflow as tf

    select_module = sys.modules["domadapt.validators.select"]  # the package's `select` is the function
    source_x, source_y, target_x, _ = moons
    passes = []

    def images():
        passes.append(1)
        yield from target_x

    target = tf.data.Dataset.from_generator(images, output_signature=tf.TensorSpec([2], tf.float32))
    seen = {}

    def recording_compare(candidates, *, target, **kwargs):
        seen.update(target=target, passes=len(passes))
        return compare(candidates, target=target, **kwargs)

    compare = select_module.compare
    monkeypatch.setattr(select_module, "compare", recording_compare)
    result = da.select({"mcc": [da.MCC()]}, (source_x, source_y), target, build_adapter=build_adapter,
                       epochs=1, batch_size=64, seed=0, verbose=0)
    assert isinstance(seen["target"], np.ndarray) and seen["target"].shape == target_x.shape
    assert len(passes) == seen["passes"]  # compare and its validators read the array, not the dataset
    assert set(result.table.scores) == {"mcc", "source-only"}


def test_ensemble_agreement_scores_each_candidate_against_the_plurality_vote():
    from domadapt.validators.agreement import ensemble_agreement

    votes = {"a": np.array([0, 1, 2, 2]), "b": np.array([0, 1, 2, 1]), "c": np.array([1, 1, 1, 1])}
    # Votes per image: 0 (a, b), 1 (all), 2 (a, b), then a tie 2/1/1 -> 1 (b, c).
    assert ensemble_agreement(votes) == {"a": 0.75, "b": 1.0, "c": 0.5}
    # A three-way tie goes to the lowest class index.
    assert ensemble_agreement({"a": [2], "b": [1], "c": [0]}) == {"a": 0.0, "b": 0.0, "c": 1.0}
    with pytest.raises(ValueError, match="same, non-empty set of images"):
        ensemble_agreement({"a": [0, 1], "b": [0]})
    with pytest.raises(ValueError, match="candidate 'b' must give a 1-D array of integer"):
        ensemble_agreement({"a": [0], "b": [0.5]})
    with pytest.raises(TypeError, match="non-empty dict"):
        ensemble_agreement({})


def test_selection_benchmark_computes_agreement_as_compare_does_from_recorded_predictions():
    from domadapt.validators.agreement import ensemble_agreement

    recorded = {"source_only": "0120", "dann": "0121", "mmd": "1111"}
    rows = [{"shift": "s", "method": m, "seed": 0, "backbone": "groupnorm", "target_accuracy": 0.5,
             "source_accuracy": 0.9, "validators": {"reverse": 0.5}, "validation_target_predictions": p}
            for m, p in recorded.items()]
    groups, *_ = selection.candidate_groups(rows)
    expected = ensemble_agreement({m: [int(c) for c in p] for m, p in recorded.items()})
    assert {m: c["validators"]["agreement"] for m, c in groups["s"][0].items()} == expected
    assert all("agreement" not in row["validators"] for row in rows)  # the rows read are not changed
    del rows[1]["validation_target_predictions"]  # a run from before predictions were recorded
    groups, *_ = selection.candidate_groups(rows)
    assert all("agreement" not in c["validators"] for c in groups["s"][0].values())


def _fixed_classifier(weights):
    """A 2-class softmax classifier of 2-D points whose logits are ``x @ weights``."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False, activation="softmax")])
    model.layers[0].set_weights([np.asarray(weights, "float32")])
    return model


def test_compare_adds_the_agreement_column_with_three_candidates_or_more():
    target = np.random.default_rng(0).normal(size=(400, 2)).astype("float32")
    by_first = [[1.0, -1.0], [0.0, 0.0]]  # class 0 where x0 > 0
    candidates = {"a": _fixed_classifier(by_first), "b": _fixed_classifier(np.multiply(by_first, 2)),
                  "other": _fixed_classifier([[0.0, 0.0], [1.0, -1.0]])}  # class 0 where x1 > 0
    table = da.compare(candidates, target=target, validators=["entropy"], collapse_threshold=None)
    assert table.directions["agreement"] == "higher"
    assert table.scores["a"]["agreement"] == table.scores["b"]["agreement"] == 1.0
    # "other" agrees with the vote of a and b on the images where x0 and x1 have the same sign: about half.
    expected = np.mean((target[:, 0] > 0) == (target[:, 1] > 0))
    assert table.scores["other"]["agreement"] == pytest.approx(expected) and 0.4 < expected < 0.6
    # None of the default recommend_by is scored: every column but agreement decides, b is sharper than a (entropy).
    assert table.recommended == "b" and "agreement" not in table.reasons[0]
    table = da.compare(candidates, target=target, validators=["entropy"], recommend_by=("agreement",))
    assert table.recommended == "a"  # a and b tie on agreement: the first listed
    mixed = {"other": candidates["other"], "a": candidates["a"], "b": candidates["b"]}
    assert da.compare(mixed, target=target, validators=["entropy"], recommend_by=("agreement",)).recommended == "a"
    two = da.compare({"a": candidates["a"], "other": candidates["other"]}, target=target, validators=["entropy"])
    assert "agreement" not in two.directions  # two candidates cannot outvote one another
    off = da.compare(candidates, target=target, validators=["entropy"], agreement=False)
    assert "agreement" not in off.directions and "agreement" not in off.scores["a"]
    with pytest.raises(TypeError, match="`agreement` must be True or False"):
        da.compare(candidates, target=target, agreement="yes")

    class Named(da.validators.Entropy):
        name = "agreement"

    with pytest.raises(ValueError, match="named 'agreement'"):
        da.compare(candidates, target=target, validators=[Named()])
    assert "agreement" in da.compare(candidates, target=target, validators=[Named()], agreement=False).directions


    class NamedSourceScore(da.validators.SourceAccuracy):
        name = "agreement"

    # Without a target compare adds no column of its own: a validator of that name is no clash.
    labels = (target[:, 0] <= 0).astype(int)
    table = da.compare(candidates, source=(target, labels), target=None, validators=[NamedSourceScore()])
    assert table.scores["a"]["agreement"] == 1.0 and table.scores["other"]["agreement"] < 0.6
    # Different label spaces cannot vote together: no column.
    three = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    mixed_classes = {**candidates, "three": three}
    assert "agreement" not in da.compare(mixed_classes, target=target, validators=["entropy"]).directions


def test_compare_leaves_collapsed_and_diverged_candidates_out_of_the_vote():
    target = np.random.default_rng(0).normal(size=(400, 2)).astype("float32")
    diverged = _fixed_classifier([[np.nan, np.nan], [np.nan, np.nan]])  # NaN outputs: argmax 0 everywhere
    constant = _fixed_classifier([[0.0, 0.0], [0.0, 0.0]])  # identical outputs for every image: collapsed
    candidates = {"diverged": diverged, "constant": constant, "a": _fixed_classifier([[1.0, -1.0], [0.0, 0.0]]),
                  "b": _fixed_classifier([[2.0, -2.0], [0.0, 0.0]]), "other": _fixed_classifier([[0.0, 0.0], [1.0, -1.0]])}
    with pytest.warns(UserWarning):
        table = da.compare(candidates, target=target, validators=["entropy"], recommend_by=("agreement",))
    agreement = {c: table.scores[c]["agreement"] for c in candidates}
    # The vote is a and b's (other loses 2 to 1): the two broken candidates, which would have outvoted the
    # healthy ones on half the images (class 0 three times), do not vote, and score what they agree by chance.
    assert agreement["a"] == agreement["b"] == 1.0 and agreement["other"] < 0.6
    assert agreement["diverged"] == pytest.approx(np.mean(target[:, 0] > 0)) and table.recommended == "a"
