"""The per-interaction data handle: the only way the REST layer reaches stored data.

`Records` (records.py) asks the access decision for every read and write, merges the access filter
into queries and counts, checks each resource again, and tells the hooks what it disclosed and wrote.
"""
