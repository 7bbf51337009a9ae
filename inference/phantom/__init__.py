"""The synthetic Dixon phantom's anatomy and signals: ground truth on any voxel grid."""
