"""Choose the recommendation rule of ``da.compare`` / ``da.select`` by leave-one-shift-out.

    .venv/bin/python benchmarks/selection.py                 # reads results/shifts.json
    .venv/bin/python benchmarks/selection.py --backbone batchnorm

Reads the rows of ``benchmarks/shifts.py`` (one per shift x method x seed x backbone, with
target accuracy and the unsupervised validator scores measured without target labels) and
writes ``results/selection.md`` and ``results/selection.json`` (``selection_<backbone>.*`` for
another backbone, with the shipped rule, chosen on the groupnorm rows, applied to them).

For each shift and seed the candidates are that seed's runs of every method except the
oracle (source-only included, so a rule may pick "do not adapt"). A rule picks one candidate
per (shift, seed) from validator scores alone (``domadapt.validators.compare.recommend``, the
very function ``da.compare`` uses). The family of rules: every validator alone and the mean
rank over every pair and triple of validators, each with and without a source-accuracy-drop
guard (several thresholds) and with and without the collapse filter. For each held-out
shift, a rule is chosen on the OTHER shifts only and applied to the held-out shift; that
held-out number is what the report leads with. Choosing on the other shifts: the rule with the
best mean target accuracy of its picks, unless a rule with fewer validators trails it by less
than a margin of standard errors of their per-shift difference (the one-standard-error rule at
margin 1); the margin (0 = best mean, up to 2) is itself chosen by a leave-one-shift-out nested
inside the other shifts. The procedure with margin 0 alone (the one before 2026-12-01's second
run) is reported too. The rule chosen on all shifts (in-sample, labelled so) is the library's default.

Only rows that carry ``validators`` are used; for each shift, only seeds whose runs cover every
method that shift has validator scores for (a partly run seed is left out, and counted).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domadapt.validators.agreement import MIN_CANDIDATES, ensemble_agreement
from domadapt.validators.compare import COLLAPSE_THRESHOLD, RECOMMENDING, SOURCE_DROP, VALIDATORS, recommend

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 10  # every shift of benchmarks/shifts.py has 10 classes
# compare's second collapse test: one class for at least this share of the target images.
SINGLE_CLASS_SHARE = 0.99
# In tie-break order: the previous default (15%) first, no guard last.
SOURCE_DROPS = (0.15, 0.10, 0.05, 0.02, None)
# The rule shipped until 2026-12-01's first selection rerun: IM + SND + reverse, 15% drop, filter (chosen
# in-sample on the suite's six shifts and the earlier suite's run of 2026-11-30; reverse alone before that,
# IM + reverse before that).
TODAY = ("information_maximization", "snd", "reverse")
# How many standard errors a richer rule may trail the best and still be preferred when it has
# fewer validators (``choose_rule``): 0 is "the best mean" (the procedure before 2026-12-01's
# second run), 1 the one-standard-error rule. Which one applies is itself chosen by
# leave-one-shift-out on the shifts a rule is chosen on (``choose_margin``).
SIMPLICITY_MARGINS = (0.0, 0.25, 0.5, 1.0, 2.0)
EXCLUDED_METHODS = ("oracle",)  # trained on target labels: not a candidate a user without them could train


@dataclass(frozen=True)
class Rule:
    """Mean rank over ``by``, after the source-accuracy guard and the collapse filter."""

    by: tuple
    source_drop: float | None
    collapse_filter: bool

    def __str__(self):
        guard = "no drop guard" if self.source_drop is None else f"drop ≤ {self.source_drop:.0%}"
        return f"mean rank({' + '.join(self.by)}), {guard}, {'collapse filter' if self.collapse_filter else 'no filter'}"

    def pick(self, candidates):
        """The candidate this rule picks from ``{name: {"validators": {...}, "collapsed": bool}}``."""
        names = list(candidates)
        present = set.intersection(*(set(candidates[c]["validators"]) for c in names))
        oriented = {v: {c: _oriented(v, candidates[c]["validators"][v]) for c in names}
                    for v in sorted(present, key=_validator_order)}
        collapsed = [c for c in names if candidates[c]["collapsed"]] if self.collapse_filter else []
        return recommend(oriented, by=self.by, source_drop=self.source_drop, collapsed=collapsed)[0]


def _validator_order(name):
    names = list(VALIDATORS)
    return names.index(name) if name in names else len(names)


def _oriented(validator, value):
    higher = VALIDATORS[validator].higher_is_better if validator in VALIDATORS else True
    return value if higher else -value


def rule_family(validators, max_size=3):
    """In tie-break order: fewer validators first; then the collapse filter on before off, and
    the guard from the previous default (15%) to none: on a tie the data cannot tell them
    apart, and the filter and guard protect against failures the suite may not contain."""
    validators = sorted(validators, key=_validator_order)
    rules = []
    for size in range(1, max_size + 1):
        for by in itertools.combinations(validators, size):
            for collapse_filter in (True, False):
                for drop in SOURCE_DROPS:
                    rules.append(Rule(by, drop, collapse_filter))
    return rules


def unsupervised_collapse(row):
    """compare's collapse filter from what a row records: IM < threshold log K, or one class for 99%+.

    (The suite measures the top-class share on the target test images and IM on the
    target training images; neither reads a label.)
    """
    information = row["validators"].get("information_maximization")
    if information is not None and information / math.log(NUM_CLASSES) < COLLAPSE_THRESHOLD:
        return True
    return row.get("target_top_class_share", 0.0) >= SINGLE_CLASS_SHARE


def candidate_groups(rows, backbone="groupnorm"):
    """``({shift: [{method: candidate} per seed]}, {shift: [seeds]}, {shift: [left-out seeds]}, rows used)``.

    A (shift, seed) is used only when it has a run with validator scores of every candidate
    method that any shift of ``rows`` has (so a partly run shift or seed is left out, not
    judged on fewer candidates), source-only included.
    """
    by_shift_seed = {}
    for row in rows:
        if row["backbone"] != backbone or row["method"] in EXCLUDED_METHODS or not row.get("validators"):
            continue
        by_shift_seed.setdefault(row["shift"], {}).setdefault(row["seed"], {})[row["method"]] = row
    methods = set().union(*(set(m) for per_seed in by_shift_seed.values() for m in per_seed.values())) | {"source_only"}
    groups, seeds, left_out, used = {}, {}, {}, 0
    for shift, per_seed in by_shift_seed.items():
        complete = sorted(s for s, m in per_seed.items() if set(m) == methods)
        left_out[shift] = sorted(set(per_seed) - set(complete))
        if not complete or len(methods) < 2:
            continue
        seeds[shift] = complete
        groups[shift] = [{m: {"validators": r["validators"], "collapsed": unsupervised_collapse(r),
                              "target_accuracy": r["target_accuracy"]} for m, r in sorted(per_seed[s].items())}
                         for s in complete]
        for group, seed in zip(groups[shift], complete):
            _add_agreement(group, per_seed[seed])
        used += sum(len(per_seed[s]) for s in complete)
    return groups, seeds, left_out, used


def _add_agreement(group, rows):
    """Each candidate's ``agreement`` score, as ``da.compare`` computes it (the candidates' plurality vote on the
    same unlabeled target images; one digit per image, so at most 10 classes), when every run recorded its
    predicted classes there; rows without them (run before they were recorded) leave the group without it."""
    predictions = {m: row.get("validation_target_predictions") for m, row in rows.items() if m in group}
    if len(predictions) < MIN_CANDIDATES or not all(predictions.values()):
        return
    # compare leaves collapsed candidates out of the vote; here as its collapse filter is emulated.
    voters = [m for m in predictions if not group[m]["collapsed"]]
    scores = ensemble_agreement({m: np.frombuffer(p.encode(), dtype=np.uint8) - ord("0") for m, p in predictions.items()},
                                voters)
    for method, value in scores.items():
        group[method]["validators"] = {**group[method]["validators"], "agreement": value}


def rows_of_validator_selection(path, backbone="groupnorm"):
    """Rows in the shape of shifts.json from ``benchmarks/validator_selection.py``'s earlier results.

    That benchmark (one seed, albumentations-rendered targets, 12 candidates with hand-set
    weights, no oracle) is a different suite: its shifts are named ``earlier:<shift>``.
    """
    data = json.loads(Path(path).read_text())
    rows = []
    for shift, result in data["shifts"].items():
        for candidate, scores in result["scores"].items():
            rows.append({"shift": f"earlier:{shift}", "method": "source_only" if candidate == "source-only" else candidate,
                         "seed": 0, "backbone": backbone, "target_accuracy": result["target_accuracy"][candidate],
                         "source_accuracy": scores["source_accuracy"], "validators": scores})
    return rows


def pick_accuracies(rule, seed_groups):
    return [group[rule.pick(group)]["target_accuracy"] for group in seed_groups]


def mean_pick_accuracies(rules, groups):
    """``{rule: {shift: mean over seeds of the target accuracy of the rule's pick}}``."""
    return {rule: {shift: float(np.mean(pick_accuracies(rule, seed_groups))) for shift, seed_groups in groups.items()}
            for rule in rules}


def choose_rule(rules, accuracies, shifts, margin=0.0):
    """The rule to ship, chosen on ``shifts`` from ``accuracies[rule][shift]``.

    ``margin=0``: the first of ``rules`` with the best mean over ``shifts``. ``margin=k > 0``:
    the rule with the fewest validators among those whose mean is within ``k`` standard errors
    of the best one's (the standard error of the mean per-shift difference to the best rule,
    paired by shift), the highest mean among those, then the first in family order.
    ``k=1`` is the one-standard-error rule (Breiman et al. 1984, *Classification and Regression
    Trees*, 3.4.3): a richer rule whose gain is inside the shift-to-shift spread has not shown one.
    With one shift there is no spread and the best mean decides.
    """
    means = np.array([np.mean([accuracies[rule][s] for s in shifts]) for rule in rules])
    best = int(np.argmax(means))
    if margin <= 0 or len(shifts) < 2:
        return rules[best]
    within = []
    for index, rule in enumerate(rules):
        differences = np.array([accuracies[rules[best]][s] - accuracies[rule][s] for s in shifts])
        if differences.mean() <= margin * differences.std(ddof=1) / np.sqrt(len(shifts)) + 1e-12:
            within.append(index)
    fewest = min(len(rules[i].by) for i in within)
    return rules[max((i for i in within if len(rules[i].by) == fewest), key=lambda i: (means[i], -i))]


def choose_margin(rules, accuracies, shifts, margins=SIMPLICITY_MARGINS):
    """The margin of :func:`choose_rule` whose rules, chosen on all of ``shifts`` but one, pick
    best on the one left out (mean over ``shifts``); ties go to the larger margin (the simpler
    rule). One margin given: that one. Fewer than 3 shifts leave no spread to measure: margin 0."""
    if len(margins) == 1:
        return margins[0]
    if len(shifts) < 3:
        return 0.0
    scores = {margin: np.mean([accuracies[choose_rule(rules, accuracies, [s for s in shifts if s != held], margin)][held]
                               for held in shifts]) for margin in margins}
    return max(margins, key=lambda margin: (round(float(scores[margin]), 9), margin))


def choose(rules, accuracies, shifts, margins=SIMPLICITY_MARGINS):
    """``(rule, margin)``: the margin by leave-one-shift-out on ``shifts``, then the rule on all of them."""
    margin = choose_margin(rules, accuracies, shifts, margins)
    return choose_rule(rules, accuracies, shifts, margin), margin


def leave_one_shift_out(rules, groups, margins=SIMPLICITY_MARGINS):
    """``{held-out shift: (rule, margin)}``: both chosen on the other shifts only (the margin by a
    leave-one-shift-out nested inside them), so the held-out shift judges the whole procedure.
    Needs at least two shifts."""
    shifts = list(groups)
    if len(shifts) < 2:
        raise ValueError(f"leave-one-shift-out needs at least 2 shifts with validator scores; have {shifts}.")
    accuracies = mean_pick_accuracies(rules, groups)
    return {held: choose(rules, accuracies, [s for s in shifts if s != held], margins) for held in shifts}


# =========================================================================== report

def _mean_std(values):
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _method_means(seed_groups):
    """``{method: mean over seeds of its target accuracy}`` for one shift's groups."""
    return {m: float(np.mean([g[m]["target_accuracy"] for g in seed_groups])) for m in seed_groups[0]}


def shift_summary(shift, rule, margin, groups, oracle_accuracy):
    """The picks of ``rule`` on ``shift``; ``margin``: the one it was chosen with (None: not chosen here)."""
    accuracies = pick_accuracies(rule, groups[shift])
    picks = [rule.pick(group) for group in groups[shift]]
    method_means = _method_means(groups[shift])
    best = max(method_means, key=method_means.get)
    pick_mean, pick_std = _mean_std(accuracies)
    source_only = method_means["source_only"]
    gap = (pick_mean - source_only) / (oracle_accuracy - source_only) if oracle_accuracy - source_only > 0 else float("nan")
    return {"shift": shift, "rule": str(rule), "margin": margin, "picks": picks, "pick_mean": pick_mean, "pick_std": pick_std,
            "best_candidate": best, "best_mean": method_means[best], "source_only": source_only,
            "oracle": oracle_accuracy, "gap_closed": gap, "num_seeds": len(accuracies)}


def goals(summaries):
    gaps = [s["gap_closed"] for s in summaries if not math.isnan(s["gap_closed"])]
    vs_source = [s["pick_mean"] - s["source_only"] for s in summaries]
    vs_best = [s["best_mean"] - s["pick_mean"] for s in summaries]
    return {"mean_gap_closed": float(np.mean(gaps)) if gaps else float("nan"),
            "worst_vs_source_only": float(min(vs_source)), "mean_below_best": float(np.mean(vs_best)),
            "meets_gap_goal": bool(gaps) and float(np.mean(gaps)) >= 0.5,
            "meets_source_only_goal": float(min(vs_source)) >= -0.01,
            "meets_best_goal": float(np.mean(vs_best)) <= 0.03}


def oracle_accuracies(rows, backbone, seeds):
    result = {}
    for shift, kept in seeds.items():
        values = [r["target_accuracy"] for r in rows if r["backbone"] == backbone and r["shift"] == shift
                  and r["method"] == "oracle" and r["seed"] in kept]
        values = values or [r["target_accuracy"] for r in rows
                            if r["backbone"] == backbone and r["shift"] == shift and r["method"] == "oracle"]
        result[shift] = float(np.mean(values)) if values else float("nan")
    return result


def _table(summaries, title):
    lines = [f"\n### {title}\n", "| shift | rule | picks per seed | pick target acc | best candidate | source-only | oracle "
             "| gap closed |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        spread = f"± {s['pick_std']:.1%} (n={s['num_seeds']})" if s["num_seeds"] > 1 else "(1 seed)"
        oracle = "—" if math.isnan(s["oracle"]) else f"{s['oracle']:.1%}"
        gap = "—" if math.isnan(s["gap_closed"]) else f"{s['gap_closed']:+.0%}"
        margin = "" if s.get("margin") is None else f" (margin {s['margin']:g} SE)"
        lines.append(f"| {s['shift']} | {s['rule']}{margin} | {', '.join(s['picks'])} | {s['pick_mean']:.1%} {spread} "
                     f"| {s['best_candidate']} {s['best_mean']:.1%} | {s['source_only']:.1%} | {oracle} | {gap} |")
    g = goals(summaries)
    lines.append(f"\nMean gap closed (over shifts with an oracle) {g['mean_gap_closed']:+.0%} (goal ≥ 50%: "
                 f"{'met' if g['meets_gap_goal'] else 'short by ' + format(0.5 - g['mean_gap_closed'], '.0%')}); "
                 f"worst shift vs source-only {100 * g['worst_vs_source_only']:+.1f} points (goal ≥ −1: "
                 f"{'met' if g['meets_source_only_goal'] else 'short by ' + format(-1 - 100 * g['worst_vs_source_only'], '.1f') + ' points'}); "
                 f"mean {100 * g['mean_below_best']:.1f} points below the best candidate (goal ≤ 3: "
                 f"{'met' if g['meets_best_goal'] else 'short by ' + format(100 * g['mean_below_best'] - 3, '.1f') + ' points'}).")
    return lines, g


@dataclass(frozen=True)
class AlwaysMethod:
    """No validator: always the same method (the one that did best on the shifts it was chosen on)."""

    method: str

    def __str__(self):
        return f"always {self.method} (no validator)"

    def pick(self, candidates):
        return self.method


def best_fixed_method(groups, shifts):
    """:class:`AlwaysMethod` of the candidate with the best mean target accuracy over ``shifts``."""
    means = [_method_means(groups[s]) for s in shifts]
    return AlwaysMethod(max(means[0], key=lambda m: np.mean([per_shift[m] for per_shift in means])))


def held_back_sections(held_groups, groups, suite_shifts, oracle, rules, accuracies, shipped, chosen, margin):
    """What choices made on ``groups`` (the choosing shifts) do on ``held_groups``, shifts nobody chose on: the
    shipped rule, the rule the procedure chooses on all choosing shifts, their best mean (margin 0), and always
    running the method that did best on ``suite_shifts`` (the choosing shifts whose candidates are the suite's
    methods: an earlier suite's are others)."""
    shifts = list(groups)
    choices = {"held_back_shipped": (shipped, None), "held_back_chosen": (chosen, margin),
               "held_back_best_mean": (choose_rule(rules, accuracies, shifts, 0.0), 0.0)}
    if suite_shifts:  # the earlier suite's candidates are other recipes: no method to carry over from them alone
        choices["held_back_fixed_method"] = (best_fixed_method(groups, suite_shifts), None)
    return {name: [shift_summary(s, rule, rule_margin, held_groups, oracle[s]) for s in held_groups]
            for name, (rule, rule_margin) in choices.items()}


def evaluate(rows, backbone="groupnorm", extra_rows=(), held_back=()):
    """The report; ``extra_rows``: lists of rows from other suites, each grouped on its own; ``held_back``: shift
    names no rule is chosen on (reported apart, with the rules chosen on the others)."""
    # Grouped apart: which seeds count as complete depends on the methods present, and the held-back rows must
    # not decide that for the choosing shifts.
    held_groups, held_seeds, _, held_used = candidate_groups([r for r in rows if r["shift"] in held_back], backbone)
    groups, seeds, left_out, used = candidate_groups([r for r in rows if r["shift"] not in held_back], backbone)
    suite_shifts = list(groups)
    for more in extra_rows:
        more_groups, more_seeds, more_left_out, more_used = candidate_groups(more, backbone)
        groups.update(more_groups), seeds.update(more_seeds), left_out.update(more_left_out)
        used += more_used
    if not groups:
        raise SystemExit(f"No {backbone} rows with validator scores and a source-only candidate yet.")
    validators = sorted(set.intersection(*(set(c["validators"]) for gs in groups.values() for g in gs
                                            for c in g.values())), key=_validator_order)
    rules = rule_family(validators)
    oracle = oracle_accuracies(rows, backbone, seeds)
    shifts = list(groups)
    accuracies = mean_pick_accuracies(rules, groups)
    chosen_on_all, margin_on_all = choose(rules, accuracies, shifts)
    ranked = sorted(rules, key=lambda r: -np.mean([accuracies[r][s] for s in shifts]))  # stable: ties keep family order
    today = Rule(TODAY, 0.15, True)
    report = {"today_rule": str(today), "backbone": backbone, "rows_used": used, "shifts": shifts,
              "suite_shifts": suite_shifts, "seeds": seeds,
              "seeds_left_out_partial": {s: v for s, v in left_out.items() if v},
              "methods": {s: list(groups[s][0]) for s in shifts}, "validators": validators, "num_rules": len(rules),
              "chosen_on_all_shifts": {"by": list(chosen_on_all.by), "source_drop": chosen_on_all.source_drop,
                                       "collapse_filter": chosen_on_all.collapse_filter, "text": str(chosen_on_all),
                                       "margin": margin_on_all},
              "margins": list(SIMPLICITY_MARGINS),
              "top_rules_in_sample": [{"rule": str(r), "mean_pick_accuracy": float(np.mean([accuracies[r][s] for s in shifts])),
                                       "per_shift": accuracies[r]} for r in ranked[:8]]}
    sections = {}
    if len(shifts) >= 2:
        held = leave_one_shift_out(rules, groups)
        sections["held_out"] = [shift_summary(s, *held[s], groups, oracle[s]) for s in shifts]
        best_mean = leave_one_shift_out(rules, groups, margins=(0.0,))
        sections["held_out_best_mean"] = [shift_summary(s, *best_mean[s], groups, oracle[s]) for s in shifts]
        # How much the held-out result owes to the margin: each margin fixed instead of chosen.
        report["held_out_by_fixed_margin"] = {
            f"{margin:g}": goals([shift_summary(s, *fixed[s], groups, oracle[s]) for s in shifts])
            for margin in SIMPLICITY_MARGINS for fixed in [leave_one_shift_out(rules, groups, margins=(margin,))]}
    sections["in_sample"] = [shift_summary(s, chosen_on_all, margin_on_all, groups, oracle[s]) for s in shifts]
    sections["today"] = [shift_summary(s, today, None, groups, oracle[s]) for s in shifts]
    shipped = Rule(tuple(RECOMMENDING), SOURCE_DROP, True)
    report["shipped_rule"] = str(shipped)
    if shipped != chosen_on_all and set(shipped.by) <= set(validators):
        # Rows the shipped rule was not chosen on (another backbone): an independent check of it.
        sections["shipped"] = [shift_summary(s, shipped, None, groups, oracle[s]) for s in shifts]
    if held_groups:
        report["held_back_shifts"], report["held_back_seeds"] = list(held_groups), held_seeds
        report["held_back_rows_used"] = held_used
        held_oracle = oracle_accuracies(rows, backbone, held_seeds)
        sections.update(held_back_sections(held_groups, groups, suite_shifts, held_oracle, rules, accuracies, shipped,
                                           chosen_on_all, margin_on_all))
    report.update(sections)
    report["goals"] = {name: goals(summaries) for name, summaries in sections.items()}
    return report


def render_markdown(report):
    lines = ["# Selecting an adaptation without target labels: the rule, chosen by leave-one-shift-out\n",
             "Generated by `benchmarks/selection.py` from `shifts.json` (do not edit by hand). Candidates per "
             "(shift, seed): every method of `benchmarks/shifts.py` with its defaults, source-only included, the "
             "oracle excluded. A rule sees only validator scores (no target label) and picks one candidate per seed; "
             "the pick's target accuracy is then read. Gap closed = (pick − source-only) / (oracle − source-only) on "
             "means over seeds.\n",
             f"Data: {report['rows_used']} runs ({report['backbone']} backbone), shifts {', '.join(report['shifts'])}; "
             "seeds per shift: " + "; ".join(f"{s}: {v}" for s, v in report["seeds"].items())
             + (f"; partly run seeds left out: {report['seeds_left_out_partial']}" if report["seeds_left_out_partial"] else "")
             + f". Candidates of the suite: {', '.join(next(iter(report['methods'].values())))}."
             + (" Shifts named `earlier:` come from `benchmarks/validator_selection.py` (a different, earlier suite: "
                "one seed, albumentations-rendered targets, 12 hand-weighted candidates, no oracle, so no gap closed); "
                "they take part in choosing rules and are held out like the others."
                if any(s.startswith("earlier:") for s in report["shifts"]) else "")
             + f" {report['num_rules']} rules (each of "
             f"{len(report['validators'])} validators alone, mean rank over every pair and triple; source-accuracy "
             f"guard 15 / 10 / 5 / 2% / none; collapse filter on / off; ties go to fewer validators, then filter on, "
             f"then the looser guard). Choosing a rule on a set of shifts: the best mean pick accuracy, unless a rule "
             f"with fewer validators trails it by at most `margin` standard errors of their per-shift differences "
             f"(margin 1: the one-standard-error rule, Breiman et al. 1984); the margin, one of "
             f"{', '.join(format(m, 'g') for m in report['margins'])}, is chosen by leave-one-shift-out on the same "
             f"shifts (nested inside the held-out loop; ties to the larger margin).\n"]
    if "held_out" in report:
        text, _ = _table(report["held_out"], "Held out: the rule (and margin) chosen on the other shifts, applied to this one")
        lines += text
        text, _ = _table(report["held_out_best_mean"], "For reference, held out with margin 0 only (the best mean on the "
                                                       "other shifts: the procedure before this run)")
        lines += text
        lines += ["\nHeld out with each margin fixed instead of chosen (mean gap closed; worst shift vs source-only; mean "
                  "below the best candidate): " + "; ".join(
                      f"{margin} SE: {g['mean_gap_closed']:+.0%}, {100 * g['worst_vs_source_only']:+.1f}, "
                      f"{100 * g['mean_below_best']:.1f}" for margin, g in report["held_out_by_fixed_margin"].items()) + "."]
    else:
        lines.append("\nOnly one shift has validator scores: no leave-one-shift-out number yet.\n")
    text, _ = _table(report["in_sample"], f"In-sample (rule chosen on all shifts, evaluated on the same): "
                                          f"{report['chosen_on_all_shifts']['text']} (margin "
                                          f"{report['chosen_on_all_shifts']['margin']:g} SE)")
    lines += text
    lines.append("\nTop rules on all shifts (in-sample mean pick accuracy; ties in family order): "
                 + "; ".join(f"{t['rule']} {t['mean_pick_accuracy']:.1%}" for t in report["top_rules_in_sample"][:5]) + ".")
    lines.append("\nThis in-sample rule is the default of `da.compare` / `da.select`; the held-out table is the "
                 "estimate of how it does on a new shift.")
    if "shipped" in report:
        text, _ = _table(report["shipped"], f"The library's rule as shipped ({report['shipped_rule']}, chosen on "
                                            "the groupnorm rows), on these rows")
        lines += text
    text, _ = _table(report["today"], f"For reference: the rule shipped until 2026-12-01 ({report['today_rule']}), "
                                      "chosen in-sample on the suite and the earlier suite's previous run")
    lines += text
    if report.get("held_back_shifts"):
        lines.append(f"\n## Held-back shifts: {', '.join(report['held_back_shifts'])}\n")
        lines.append("Added to the suite after the library's rule was frozen (commit 9144c96: renderers written and "
                     "committed before any training run on them was seen). No rule, margin or method below was chosen on "
                     "them: each was chosen on the shifts above (" + ", ".join(report["shifts"]) + ") and only applied "
                     "here. " + f"{report['held_back_rows_used']} runs; seeds: "
                     + "; ".join(f"{s}: {v}" for s, v in report["held_back_seeds"].items()) + ".")
        titles = {"held_back_shipped": f"The library's rule as shipped ({report['shipped_rule']})",
                  "held_back_chosen": "The rule the procedure chooses on all the shifts above (nested margin)",
                  "held_back_best_mean": "The rule with the best mean on the shifts above (margin 0)",
                  "held_back_fixed_method": "No validator: always the method with the best mean on the suite's "
                                            "shifts above (" + ", ".join(report["suite_shifts"]) + ")"}
        for name, title in titles.items():
            if name not in report:
                continue
            text, _ = _table(report[name], title)
            lines += text
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "shifts.json")
    parser.add_argument("--backbone", default="groupnorm")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--earlier", type=Path, default=RESULTS_DIR / "validator_selection.json",
                        help="validator_selection.py's results, added as more shifts; --earlier none to leave them out")
    args = parser.parse_args(argv)
    rows = json.loads(args.results.read_text())["rows"]
    extra = [rows_of_validator_selection(args.earlier, args.backbone)] if str(args.earlier) != "none" else []
    from shifts import SHIFTS  # benchmarks/shifts.py: which shifts are held back

    report = evaluate(rows, args.backbone, extra, held_back=[name for name, shift in SHIFTS.items() if shift.held_back])
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "selection" if args.backbone == "groupnorm" else f"selection_{args.backbone}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    markdown = render_markdown(report)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    sys.exit(main())
