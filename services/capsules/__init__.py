"""The capsules service (SPEC §6): time-locked letters, their unlocker, and the theme catalog."""
