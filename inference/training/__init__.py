"""Training and fine-tuning a model package: configuration, data, loss, loop, checkpoints,
the package written, and the ``myonode train`` command line."""
