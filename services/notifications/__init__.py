"""The notifications service (SPEC §14): each user's notifications, made from the events of the other services."""
