"""Detection pseudo-labels: region proposals (SAM or classical), CoT-PL's mask filters, a visual prompt
per region, three chained VLM questions answered by option scoring, and COCO / CoT-PL raw / Label
Studio outputs. See docs/pseudo-labels.md."""
