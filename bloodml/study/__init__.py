"""Studies: many configurations on the same folds, paired comparisons, one report."""
