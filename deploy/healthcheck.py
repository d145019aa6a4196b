"""Container healthcheck: `python deploy/healthcheck.py URL` exits 0 if URL answers 200."""

import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
