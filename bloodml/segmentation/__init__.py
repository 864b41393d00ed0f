"""Cell segmentation (background / cytoplasm / nucleus) learnt from expert masks, for images that have none."""
