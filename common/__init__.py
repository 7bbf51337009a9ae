"""The vocabulary every stage shares: patient-space geometry, the muscle table, and the
description of a study's frames and stacks. It imports no stage, so every stage can import it."""
