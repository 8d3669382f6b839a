"""Evaluation: FID, KID, precision and recall of a model or of two real sets (`evaluate`), the
Inception features and reference statistics (`fid`, `statscache`), the metrics (`metrics`)."""
