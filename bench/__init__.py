"""Isthmus benchmarks: `python -m bench [NAME ...] [--repeat N]` prints a table, writes JSON and markdown."""
