"""Studies: the paper's ablations and the original notes' questions, each answered by a grid
of runs with several seeds and a report that judges the paper's claims.

    catalog.py   the studies (cells, the paper's numbers, claims)
    verdicts.py  claims and the one rule that judges them
    runner.py    planning, running and resuming the runs
    report.py    report.md / report.json, and the overview of several studies
    plots.py     the pictures
    budget.py    budgets: how much a study may spend, read from YAML files
    budgets/     quick.yaml (2 CPU cores), paper.yaml (one GPU): copy and edit
"""
