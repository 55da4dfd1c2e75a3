"""Models that generate semantic IDs (tiger, causal) and the SASRec baseline."""
