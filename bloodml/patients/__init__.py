"""The patient model: a patient's call from all its cells (a learnt attention pooling over their features, or a
fixed rule over their probabilities) and, when the lab has them, the patient's covariates (blood count, age)."""
