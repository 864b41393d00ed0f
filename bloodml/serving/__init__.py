"""Serving a trained classifier to clients that send image files: requests in, class names and probabilities out."""
