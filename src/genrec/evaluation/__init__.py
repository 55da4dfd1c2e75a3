"""Evaluation: ranking metrics and the leave-one-out protocol."""
