"""Write the model cards (README.md) of the bundled toon models from their pedit.json and their
held-out reports in docs/results/ (weights and pedit.json untouched; text a user added to a card
outside pedit's marked blocks is kept).

    PYTHONPATH=$PWD python scripts/write_bundled_cards.py
"""

import json
from pathlib import Path

from pedit.model.card import CARD_FILE, read_card, render_card

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = (  # folder, what -m takes, the held-out report of its "ours" row (tests/test_model_card.py reads these)
    ("pedit/assets/toon-model", "toon", "docs/results/toon-eval-teacher-joint/report.json"),
    ("pedit/assets/toon-model-fast", "toon-fast", "docs/results/toon-eval-joint-choice/report.json"),
)


def main() -> None:
    for folder, use_as, report in BUNDLED:
        folder = ROOT / folder
        meta = json.loads((folder / "pedit.json").read_text())
        text = render_card(folder.name, meta, read_card(folder), json.loads((ROOT / report).read_text()),
                           folder / CARD_FILE, use_as=use_as)
        (folder / CARD_FILE).write_text(text, encoding="utf-8")
        print(folder / CARD_FILE)


if __name__ == "__main__":
    main()
