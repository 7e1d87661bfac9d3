"""Sweeps on Ray Tune: the search space and trials (each one a run of the training
driver), the results table, and the best trial's model registered."""
