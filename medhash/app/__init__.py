"""Workflows above the layers: they combine the model, the index and the evaluation."""
