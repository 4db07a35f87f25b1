"""The paper's tables and figures, rebuilt from a run's result files.

`tables` and `figures` hold pure builders (frame in, table or figure out); `registry` names
every item, reads its inputs and writes it. `python -m calm paper-table|paper-figure NAME`
runs one item; workflow/rules/paper.smk has one rule per item.
"""
