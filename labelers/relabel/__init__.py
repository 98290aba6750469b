"""The multi-label relabeler: single-label images relabeled into label sets, one module per step.

regions (where to look) -> confidence (class probabilities per region, one or N passes) -> labeling (which
classes an image gets) -> rounds (retrain a sigmoid head on the new labels, validate, repeat). See docs/relabel.md.
"""
