"""arena-pref: pairwise chatbot-answer preference prediction (LMSYS Chatbot Arena)."""

__version__ = "0.1.0"

LABELS = ("winner_model_a", "winner_model_b", "winner_tie")
"""Class order used everywhere: 0 = A wins, 1 = B wins, 2 = tie."""

PROB_COLUMNS = ["a", "b", "tie"]
"""A model's probabilities in prediction files, in LABELS order, for the (A, B) order as given."""
TTA_COLUMNS = ["a_tta", "b_tta", "tie_tta"]
"""The same averaged with the (B, A) prediction mapped back (test-time augmentation)."""
