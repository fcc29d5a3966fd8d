"""The governed build: scheduler (policy), launcher, governor, monitor, profiles, session."""
