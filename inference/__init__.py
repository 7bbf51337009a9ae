"""Arrays only, no DICOM: the segmentation pipeline, fat fraction, quantification, evaluation,
models, training, and the phantom's anatomy."""
