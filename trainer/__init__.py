"""riad-trainer: learn a RIAD model from defect-free images, measure it, export it."""
