"""`python -m kubetasks.worker.cli`: the same as the `kubetasks` console script."""

from . import main

main()
