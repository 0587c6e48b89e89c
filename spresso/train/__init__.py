"""Training stages (Ray Train) and the pieces they share: checkpoints and the harness."""
