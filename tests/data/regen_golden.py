"""Rewrite the golden report/leaderboard texts from tests/data/mini-run (after an intended change
of the rendering; review the diff before committing). Run: python tests/data/regen_golden.py"""

from pathlib import Path

from curb.leaderboard import board_setting, read_boards, render_board
from curb.report import write_report

HERE = Path(__file__).parent

write_report(HERE / "mini-run", HERE / "golden" / "report", figures=False, echo=lambda _: None)
board = read_boards(HERE / "mini-boards.toml")[0]
readme, csv = render_board(board, board_setting(board), None)
(HERE / "golden" / "leaderboard.md").write_text(readme)
(HERE / "golden" / "leaderboard.csv").write_text(csv)
