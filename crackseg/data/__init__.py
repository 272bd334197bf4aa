"""Data operations: image / mask I/O, the dataset and batch format, transforms, synthetic cracks."""
