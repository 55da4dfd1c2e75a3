"""Data: loaders for MovieLens, Amazon and generic files, synthetic data, and the shared
preparation (filters, leave-one-out splits, Parquet + manifest)."""
