"""The sending side: the storage SCU and the outbox that delivers results with back-off."""
