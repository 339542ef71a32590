"""The README's result sections are generated from the committed results files
(``python -m experiments.readme``), not typed."""

from experiments import readme


def test_readme_sections_match_the_results_files():
    text = readme.README.read_text()
    for name in readme.SECTIONS:
        assert f"<!-- BEGIN {name} -->" in text, name
    assert readme.render(text) == text, (
        "README.md is stale: run `python -m experiments.readme`"
    )
