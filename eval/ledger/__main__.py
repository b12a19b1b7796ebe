"""`python -m eval.ledger`: see eval/ledger/__init__.py."""
import sys

from eval.ledger.main import main

sys.exit(main())
