"""Everything that turns images into label evidence: embedders, cache, head, strategies, VLM labelers."""
