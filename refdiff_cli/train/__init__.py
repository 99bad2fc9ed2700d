"""train: fit a Ref-Diff model on prepared chips.

The options (``options``), plan and resume (``plan``), the loop (``run``), synthesised
references (``references``), validation (``validation``) and the checkpoint state (``state``).
"""
