"""Bench tier: the benchmarks' machinery without a stack (counting, the per-epoch arithmetic,
the projection onto AWS read from the template, the JSON, tables and plot they write).

What these tests may use: the project's code in this process and files in a temporary
folder; no stack, servers or network. The benchmarks themselves run on a fresh embedded
stack with `make bench` and its siblings, not here.
"""
