"""labelloop: turn a folder of unlabeled images into a labeled dataset with Label Studio."""
__version__ = "0.1.0"
