"""Training: the epoch loop and its techniques (balancing, regularisation, early stopping, fine-tuning)."""
