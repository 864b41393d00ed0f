"""bloodml: train, track and compare transfer-learning CNNs on small blood-cell microscopy datasets."""

__version__ = "0.1.0"
