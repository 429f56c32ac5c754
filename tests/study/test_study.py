"""`fastclr study`: a tiny study end to end, stopped by SIGKILL and run again; the verdict
rule on made-up numbers; bad cells refused before anything runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fixtures import HANG_SECONDS, SAMPLE
from fastclr.errors import ConfigError
from fastclr.study.verdicts import FAILS, HOLDS, UNSURE, Alike, Best, Better, GapShrinks, Trend

# a 2-cell study, registered in the process that runs it (the CLI's own code path)
TINY = """
import sys
from fastclr.registry import STUDIES
from fastclr.study.catalog import Cell, Study
from fastclr.study.verdicts import Better
STUDIES.register("tiny", Study("tiny", "two heads", "test", "?", (
    Cell("linear", {"head": "linear"}), Cell("nonlinear", {"head": "nonlinear"})),
    claims=(Better("nonlinear beats linear", "nonlinear", "linear"),)))
from fastclr.cli import main
sys.exit(main(["study", "tiny", "--budget", sys.argv[1], "--out", "studies"]))
"""

BUDGET = f"""
base: fashion-mnist-cpu
seeds: [0, 1]
options: {{data_dir: {SAMPLE}, width: 0.125, stem: small-s2, batch_size: 32, epochs: 1,
          max_steps: 6, checkpoint_every: 2, log_every: 1, tensorboard: false,
          deterministic: true, threads: 1, eval_batch_size: 256}}
"""


def _study(cwd, budget):
    return subprocess.Popen([sys.executable, "-c", TINY, str(budget)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_a_killed_study_resumes_and_reports_as_if_never_stopped(tmp_path):
    budget = tmp_path / "budget.yaml"
    budget.write_text(BUDGET)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    out, _ = _study(whole, budget).communicate(timeout=HANG_SECONDS)
    assert "study tiny: report in" in out, out[-2000:]

    cells = killed / "studies" / "tiny" / "cells"
    proc = _study(killed, budget)
    deadline = time.monotonic() + HANG_SECONDS
    # kill once the first run is done and the second has trained past its first checkpoint
    while not (list(cells.glob("*/seed0/study.json"))
               and list(cells.glob("*/seed1/checkpoints/ckpt-*.pt"))):
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = next(cells.glob("*/seed0/study.json"))
    stamp = first.stat().st_mtime_ns
    out, _ = _study(killed, budget).communicate(timeout=HANG_SECONDS)
    assert "already done" in out and "study tiny: report in" in out, out[-2000:]
    assert first.stat().st_mtime_ns == stamp  # the finished run was not redone
    for name in ("report.md", "report.json"):
        a = (whole / "studies" / "tiny" / name).read_text()
        b = (killed / "studies" / "tiny" / name).read_text()
        assert a == b, name
    report = json.loads((killed / "studies" / "tiny" / "report.json").read_text())
    assert report["claims"][0]["verdict"] in (HOLDS, FAILS, UNSURE)
    assert len(report["cells"]["linear"]["seeds"]) == 2


def test_a_cell_the_base_cannot_take_is_refused_before_anything_runs(tmp_path):
    from fastclr.registry import STUDIES
    from fastclr.study.catalog import Cell, Study
    from fastclr.study.budget import load_budget
    from fastclr.study.runner import run_study

    bad = Study("bad-test", "t", "test", "?", (Cell("ok", {}), Cell("typo", {"widht": 2})))
    STUDIES.register("bad-test", bad)
    try:
        budget = tmp_path / "b.yaml"
        budget.write_text(BUDGET)
        with pytest.raises(ConfigError, match="cell 'typo': unknown option 'widht'"):
            run_study("bad-test", load_budget(str(budget)), tmp_path / "studies")
        assert not (tmp_path / "studies").exists()  # nothing ran, nothing was written
    finally:
        STUDIES.unregister("bad-test")


def test_study_cli_refuses_a_bad_budget_in_one_line(tmp_path, capsys):
    from fastclr.cli import main
    (tmp_path / "b.yaml").write_text("base: fashion-mnist-cpu\nseed: [0]\n")
    assert main(["study", "head", "--budget", str(tmp_path / "b.yaml")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "knows only base, seeds" in err[0]


def table(**cells):
    """{cell: {"m": (mean, sd, n)}} from cell=(mean, sd)."""
    return {k: {"m": (mean, sd, 3), "z": (mean - 5, sd, 3)} for k, (mean, sd) in cells.items()}


def test_better():
    t = table(a=(80.0, 0.5), b=(78.0, 0.5), c=(79.9, 0.5))
    assert Better("", "a", "b", "m").judge(t).verdict == HOLDS  # 2.0 > 0.71
    assert Better("", "b", "a", "m").judge(t).verdict == FAILS
    assert Better("", "a", "c", "m").judge(t).verdict == UNSURE  # 0.1 < 0.71
    assert Better("", "a", "b", "m", by=10).judge(t).verdict == FAILS  # 2 - 10 < -0.71
    assert Better("", "a", "a@z", "m").judge(t).verdict == HOLDS  # metric against metric
    assert Better("", "a", "c", "m", by=-1.0).judge(t).verdict == HOLDS  # "at most 1 worse"


def test_trend_best_alike_gap():
    rising = table(a=(70.0, 0.3), b=(71.0, 0.3), c=(72.0, 0.3))
    assert Trend("", ("a", "b", "c"), "m").judge(rising).verdict == HOLDS
    assert Trend("", ("a", "b", "c"), "m", direction=-1).judge(rising).verdict == FAILS
    bumpy = table(a=(70.0, 0.3), b=(75.0, 0.3), c=(72.0, 0.3))
    assert Trend("", ("a", "b", "c"), "m").judge(bumpy).verdict == UNSURE  # b -> c drops
    assert Best("", "b", ("a", "b", "c"), "m").judge(bumpy).verdict == HOLDS
    assert Best("", "c", ("a", "b", "c"), "m").judge(bumpy).verdict == FAILS
    assert Alike("", ("a", "b"), 1.0, "m").judge(rising).verdict == UNSURE  # 1.0 vs width 1
    assert Alike("", ("a", "c"), 5.0, "m").judge(rising).verdict == HOLDS
    assert Alike("", ("a", "b"), 1.0, "m").judge(bumpy).verdict == FAILS
    gaps = table(s1=(80.0, 0.2), u1=(70.0, 0.2), s2=(80.0, 0.2), u2=(76.0, 0.2))
    assert GapShrinks("", (("s1", "u1"), ("s2", "u2")), "m").judge(gaps).verdict == HOLDS
    assert GapShrinks("", (("s2", "u2"), ("s1", "u1")), "m").judge(gaps).verdict == FAILS


def test_best_names_the_comparison_that_decided_not_the_closest_mean():
    # a's mean is 0.8 above b's (spread 0.5: won) and 0.9 above c's (spread 1.2: not won)
    t = table(a=(80.0, 0.3), b=(79.2, 0.4), c=(79.1, 1.17))
    verdict = Best("", "a", ("a", "b", "c"), "m").judge(t)
    assert verdict.verdict == UNSURE
    assert verdict.detail.startswith("best mean: a; a - c = +0.90 points (spread 1.21)")


def test_one_seed_has_no_spread_and_single_values_still_judge():
    t = {"a": {"m": (80.0, float("nan"), 1)}, "b": {"m": (79.0, float("nan"), 1)}}
    assert Better("", "a", "b", "m").judge(t).verdict == HOLDS  # no spread known: s = 0


def test_every_shipped_study_plans_with_every_budget(tmp_path):
    from fastclr.registry import STUDIES
    from fastclr.study.budget import list_budgets, load_budget
    from fastclr.study.runner import plan
    for budget in list_budgets():
        b = load_budget(budget)
        for name in STUDIES:
            jobs = plan(STUDIES.get(name), b, tmp_path)
            assert len(jobs) == len(STUDIES.get(name).cells) * len(b.seeds_for(name))
            labels = {c.label for c in STUDIES.get(name).cells}
            for claim in STUDIES.get(name).claims:  # every claim names real cells
                named = [getattr(claim, k) for k in ("a", "b", "cell") if hasattr(claim, k)]
                named += list(getattr(claim, "cells", ()))
                named += [c for pair in getattr(claim, "pairs", ()) for c in pair]
                assert {n.partition("@")[0] for n in named} <= labels, (name, claim.text)


def test_runs_that_did_not_finish_are_one_line_and_keep_the_time_of_those_that_did(
        tmp_path, monkeypatch, capsys):
    """--jobs 2 with one run failing in its process: the study ends with one line naming the
    run (no traceback, no report), and the wall time counts the run that finished."""
    from fastclr.cli import main
    from fastclr.registry import STUDIES
    from fastclr.study import runner
    from fastclr.study.catalog import Cell, Study

    STUDIES.register("two-test", Study("two-test", "t", "test", "?", (Cell("a", {}),)))
    budget = tmp_path / "b.yaml"
    budget.write_text(BUDGET)

    def one_fails(left, budget, root, jobs, devices, say):
        finished = left[0].run_dir  # stands in for a run that finished: a marker file
        finished.mkdir(parents=True)
        (finished / "finished").write_text("")
    monkeypatch.setattr(runner, "_run_in_processes", one_fails)
    monkeypatch.setattr(runner, "done", lambda job: {} if (job.run_dir / "finished").exists()
                        else None)
    try:
        rc = main(["study", "two-test", "--budget", str(budget), "--out",
                   str(tmp_path / "studies"), "--jobs", "2"])
    finally:
        STUDIES.unregister("two-test")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1, err
    assert "1 of 2 runs did not finish (a/seed1;" in err[0], err
    folder = tmp_path / "studies" / "two-test"
    assert not (folder / "report.md").exists()
    assert [t["runs"] for t in json.loads((folder / "timing.json").read_text())] == [1]


def test_the_sizes_report_lists_every_size_names_its_code_and_no_machine_paths(tmp_path):
    """embedding-size on made-up runs: every size in one table (z read with the h it came
    from), no empty claims table, the git revisions the runs trained with, no run paths."""
    from types import SimpleNamespace

    from fastclr.registry import STUDIES
    from fastclr.study.budget import load_budget
    from fastclr.study.report import markdown, revisions, sizes_summary, table_of

    study, budget = STUDIES.get("embedding-size"), load_budget("quick")
    jobs, results = [], {}
    for i, cell in enumerate(study.cells):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        if i < 3:  # the other runs have no run.json (made outside a git checkout, say)
            (run_dir / "run.json").write_text(json.dumps(
                {"sessions": [{"git_revision": "ab" * 20}]}))
        job = SimpleNamespace(cell=cell, key=cell.label, run_dir=run_dir)
        jobs.append(job)
        results[job.key] = {"metrics": {"linear_top1": 0.70 + 0.01 * i,
                                        "linear_z_top1": 0.60 + 0.01 * i,
                                        "knn_top1": 0.65, "pca_top1": {"8": 0.5}}}
    extra = sizes_summary(study, jobs, results)
    code = revisions(jobs)
    assert code == {"ab" * 6: 3, "unknown": len(jobs) - 3}
    text = markdown(study, budget, table_of(study, jobs, results), [], extra, [], code)
    assert "| claim |" not in text and "states no claim" in text
    assert "| h | 32 | 70.00 |" in text and "| z of h=64 | 4 | 63.00 |" in text
    assert "| PCA of h=128 | 8 | 50.00 |" in text
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")]
    assert rows.index("| h") < rows.index("| z of h=32") < rows.index("| PCA of h=32")
    assert f"git revision `{'ab' * 6}` (3 runs), git revision `unknown` (2 runs)" in text
    assert str(tmp_path) not in text


def test_every_shipped_study_draws_its_picture_from_made_up_numbers(tmp_path):
    """Each plot kind (bars, bars per series, lines, heat map, sizes) on a table with one
    missing value and one seed without spread: a PNG, no error."""
    import math

    from fastclr.registry import STUDIES
    from fastclr.study import plots

    for name in STUDIES:
        study = STUDIES.get(name)
        metrics = (*study.metrics, "linear_top1")
        fake = {c.label: {m: (70.0 + i, 0.5 if i else math.nan, 3) for m in metrics}
                for i, c in enumerate(study.cells)}
        fake[study.cells[-1].label]["linear_top1"] = (math.nan, math.nan, 0)
        extra = {"points": [("h", 32, 70.0, 1.0), ("h", 64, 72.0, math.nan),
                            ("z of h=64", 4, 65.0, 0.5)]}
        out = tmp_path / name
        out.mkdir()
        pictures = plots.draw(study, fake, out, extra)
        assert pictures and all((out / p).stat().st_size > 1000 for p in pictures), name


def test_the_overview_links_each_report_and_gives_findings_where_no_claim_is_tested(tmp_path):
    from fastclr.study.report import write_overview

    tested = {"title": "T", "source": "Figure 8", "findings": [],
              "claims": [{"claim": "a beats b", "verdict": HOLDS, "detail": "+2 points"}]}
    measured = {"title": "M", "source": "the notes", "claims": [],
                "findings": ["smallest size within 1 point of the best: h of size 64"]}
    text = write_overview({"t": tested, "m": measured}, tmp_path, {"t": 600.0}).read_text()
    assert "| [t](t/report.md) | Figure 8 | 1 / 0 / 0 | 10 min |" in text
    assert "| [m](m/report.md) | the notes | 0 / 0 / 0 | - |" in text
    assert "- a beats b: **holds** (+2 points)" in text
    assert "- smallest size within 1 point of the best: h of size 64" in text
