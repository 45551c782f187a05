"""From per-run metric files to the paper's CSV, tables and figures.

aggregate: metric JSON files → one long CSV; summary: seeds → mean ± sd, budget order, oracle ratios;
tables and figures read only the CSV.
"""
