"""Data operations: image / mask I/O, the dataset and batch format (tiles included), transforms,
synthetic cracks and synthetic anomalies (:mod:`crackseg.data.anomalies`)."""
