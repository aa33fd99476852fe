"""The full-model judge: prompt placement, the full-model objective, profiling, verification."""
