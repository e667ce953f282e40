"""The presets (`llama summarize`, `translate`, `qa`): recipes.py (their prompts and defaults),
split.py (cutting long input into chunks and sentences), rank.py (BM25), run.py (running a
recipe over any input as a series of model steps)."""
