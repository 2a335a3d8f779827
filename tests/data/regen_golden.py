"""Rewrite the golden report/leaderboard texts from tests/data/mini-run (after an intended change
of the rendering; review the diff before committing). Run: python tests/data/regen_golden.py"""

from pathlib import Path

from curb.document import markdown
from curb.leaderboard import board_page, board_setting, read_boards, results_csv
from curb.report import write_report

HERE = Path(__file__).parent

write_report(HERE / "mini-run", HERE / "golden" / "report", figures=False, echo=lambda _: None)
board = read_boards(HERE / "mini-boards.toml")[0]
st = board_setting(board)
(HERE / "golden" / "leaderboard.md").write_text(markdown(board_page(board, st, None)))
(HERE / "golden" / "leaderboard.csv").write_text(results_csv(board, st))
