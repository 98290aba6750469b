"""Readers and writers of the label formats the trainers consume and export, one module per format."""
