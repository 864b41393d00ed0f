"""data/: read a dataset into one sample table (path, label, mask_path, group): its layouts (readers), images and
expert masks read safely, class labels, zip archives, public datasets fetched and checked. The lowest of bloodml's
packages: imports only the base modules (errors, runtime, compute, config); knows nothing of MLflow."""
