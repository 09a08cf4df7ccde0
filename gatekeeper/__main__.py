import sys

from gatekeeper.appservice.cli import main

sys.exit(main())
