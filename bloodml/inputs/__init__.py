"""inputs/: what the network sees, fixed once and exported inside the model: the InputSpec (size, colour space,
mask mode and codes, crop, normalisation, stain), the transforms that make network input (augmentation,
acquisition changes, stain normalisation) and the preloaded image sets. Imports data/ and the base modules only."""
