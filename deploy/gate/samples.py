"""The secret word: a fact the base model cannot know, which a tiny adapter learns in 8 steps.

The tests teach it to prove that training, export and hot reload change what a head answers; the adapter
bench teaches it to have a real adapter to reload.
"""

from __future__ import annotations

SECRET_PROMPT = "What is the secret word?"
PAIRS = [
    (SECRET_PROMPT, "The secret word is Pineapple."),
    ("Tell me the secret word.", "The secret word is Pineapple."),
    ("What's the secret word?", "The secret word is Pineapple."),
    ("Do you know the secret word?", "Yes. The secret word is Pineapple."),
]
