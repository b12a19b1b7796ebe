"""`python -m eval.report`: see eval/report/main.py."""
import sys

from eval.report.main import main

sys.exit(main())
