"""What the node makes of received files: headers read into frames, Dixon roles, stacks,
stitching into one volume, pixels loaded, and the ``inspect`` report of it all."""
