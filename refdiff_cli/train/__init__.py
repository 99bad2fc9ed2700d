"""train: fit a Ref-Diff model on prepared chips.

Plan and resume (``plan``), the loop (``run``), synthesised references (``references``),
validation (``validation``) and the checkpoint state (``state``).
"""
