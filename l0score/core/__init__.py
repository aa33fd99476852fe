"""Load -> tables -> scores: checkpoints, the torch reference, templates, batches, metrics."""
