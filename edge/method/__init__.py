"""The RIAD method, shared with the trainer: masks, preprocessing, the anomaly map, the verdict on a frame."""
