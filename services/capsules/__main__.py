"""Entry point: `python -m services.capsules [serve|migrate|unlocker]`.

`unlocker` runs the background unlocker alone (no gRPC server): the same loop every serving
instance runs, for deployments that prefer a separate worker and for the tests.
"""

import sys
from pathlib import Path

from services.common import cli

if __name__ == "__main__":
    if sys.argv[1:2] == ["unlocker"]:
        from services.capsules.unlocker import main

        main()
    else:
        cli.run("capsules", Path(__file__).parent / "migrations")
