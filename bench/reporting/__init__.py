"""Reporting: records, results folders and leaderboards, scores over seeds, metrics, plots and the HTML report,
and the tables of docs/ (see docs/architecture.md)."""
