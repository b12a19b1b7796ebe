"""`ddpmcodec report`: regenerate the evaluation report; the same click command (one option list, one style) as
`python -m eval.report` (eval/report/options.py)."""
from __future__ import annotations

from eval.report.options import make_command

report = make_command("report")

COMMANDS = [report]
