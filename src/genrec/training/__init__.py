"""Training: one loop for tiger, causal and sasrec, with checkpoints, resume and DDP."""
