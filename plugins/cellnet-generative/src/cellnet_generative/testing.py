"""Shared test data for the generative decoders' tests (and third-party decoder tests)."""

from __future__ import annotations

#: 30 short distinct chat sentences: small enough for tiny decoders to learn exactly.
SENTENCES = [
    "hello there, how are you?", "i am fine, thank you.", "what is your name?", "my name is cell.",
    "the weather is nice today.", "do you like green tea?", "yes, with a little honey.", "where do you live?",
    "i live in a small lattice.", "good night and sleep well!", "what time is it?", "it is half past nine.",
    "can you help me with my homework?", "sure, what subject is it?", "i love reading old books.",
    "my favourite colour is blue.", "how old are you?", "older than i look.", "tell me a joke.",
    "why did the chicken cross the road?", "see you tomorrow.", "have a great weekend!",
    "are you a robot?", "i am a small neural network.", "what do you eat?", "electricity, mostly.",
    "let's play a game.", "which game do you like?", "it is raining again.", "bring an umbrella then.",
]
