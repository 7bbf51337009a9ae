"""The receiving side: the storage SCP (C-ECHO, C-STORE) and the durable spool it writes to."""
