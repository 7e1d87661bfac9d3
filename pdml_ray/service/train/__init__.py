"""Training on Ray: the one TorchTrainer driver (jobs and Tune trials), the per-worker
loop, checkpoints, checks before workers start, where a run's time goes, the progress
lines, PDML's distance histograms, the EmbeddingStore actor and data checks on Ray."""
