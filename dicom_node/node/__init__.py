"""What every part of the running node shares: its configuration, structured logs, state
database, metrics and the disk-space check. Imports no other part of the node."""
