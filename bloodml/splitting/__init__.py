"""splitting/: from a read dataset to a leak-proof, audited split: content hashes, exact and near copies grouped,
seeded splits by class and group, the leakage audit, and `prepare` (the data pipeline of one run: read, label,
group copies, split, audit) with `inspect` (the same, reported). Imports data/ and the base modules only."""
