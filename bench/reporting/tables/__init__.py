"""Tables of results folders, as docs/ shows them (Markdown text): views over the leaderboard files that
`bench run` and `bench leaderboard` write from the records. One module per table; each is a
`bench table` subcommand (bench/cli.py), and the old scripts under benchmarks/ call the same functions.

- `fidelity`: each defense cell of `results/fidelity/` beside `none`, with the verdicts of docs/fidelity.md;
- `matrix`: the setting matrix (docs/fidelity.md, run 7), one factor changed at a time;
- `seeds`: one attack x dataset over seeds (docs/findings.md);
- `grid`: defense x attack tables of one seed's records (docs/findings.md);
- `defenses`: dataset x attack by defense tables from a leaderboard CSV (docs/findings.md);
- `release`: the MuScleLoRA release's poisoned data beside our attacks (issue 13, docs/findings.md);
- `curve`: the defender-knowledge curve (issue 25);
- `goal`: one defense judged by issue 25's goal, criterion by criterion.
"""
