"""The merging maths: pure functions over task vectors (name -> tensor dicts), one module per
method, CALM's mask loop included. The registry of methods is calm.methods; nothing here imports
a model family, a data source or a stage (tests/test_house_plan.py)."""
