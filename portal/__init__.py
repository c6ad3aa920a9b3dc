"""The portal shell: configuration, database, mail, storage, security, audit and the UI frame."""
