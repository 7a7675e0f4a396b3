"""Push delivery (SPEC §14): the provider interface (base.py), its adapters (fcm.py, apns.py,
log.py), their configuration from the environment (config.py) and the sender job (sender.py)."""
