"""The running node: ``myonode serve`` and its commands, the study completion monitor and the
job worker that ties receiving, processing and sending together."""
