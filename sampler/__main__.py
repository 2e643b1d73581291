"""`python -m sampler` behaves as the `tailsampler` command."""

from sampler.cli import main

raise SystemExit(main())
