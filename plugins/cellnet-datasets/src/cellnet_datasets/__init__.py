"""cellnet datasets: real corpora from pip packages (chatterbot, faq, chitchat) and the user's own
files (pairs, texts, selection), each with a fixed, seeded, grouped train/val/test split."""

__version__ = "0.1.0"
