"""Results to DICOM objects (DICOM-SEG, TID 1500 SR), with highdicom. No networking."""
