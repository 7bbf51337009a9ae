"""DICOM in and out and the life of a study: receive, understand, process (``process.py``),
send, and the running node that ties them together; ``cli.py`` is the ``myonode`` command."""
