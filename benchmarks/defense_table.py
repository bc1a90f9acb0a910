"""Moved to bench/reporting/tables/defenses.py: `bench table defenses LEADERBOARD_CSV`; this path stays for the commands cited."""
import sys

import pandas as pd

from bench.reporting.tables.defenses import table

if __name__ == "__main__":
    print(table(pd.read_csv(sys.argv[1])))
