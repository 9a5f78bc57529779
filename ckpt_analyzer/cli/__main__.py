"""``python -m ckpt_analyzer.cli``."""

from . import main

main()
