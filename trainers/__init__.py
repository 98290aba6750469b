"""Everything that trains a model from labels: complementary-label losses, Lightning modules, formats."""
