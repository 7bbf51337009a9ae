"""The phantom's DICOM writer: a synthetic study written the way each vendor exports it."""
