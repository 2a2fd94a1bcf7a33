"""Isthmus benchmarks: `python -m bench [NAME ...] [--repeat N]` prints a table and writes JSON and markdown."""
